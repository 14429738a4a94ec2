//! The arithmetic of the report: percentiles, median/min/max over rounds and
//! ratios to the reference server.

use serde::Serialize;

/// Nearest-rank percentile of ascending `sorted` samples: the smallest value
/// with at least `p`% of the samples at or below it. Exact (no interpolation),
/// so p99.9 of 1000 samples is the 999th, and of fewer samples the maximum.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let n = sorted.len();
    // The epsilon keeps 99.9% of 1000 at rank 999 despite 0.999 * 1000
    // landing a hair above 999 in floating point.
    let rank = ((p / 100.0) * n as f64 - 1e-9).ceil().max(1.0) as usize;
    Some(sorted[rank.min(n) - 1])
}

/// Median: the middle value, or the mean of the two middle values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Median, minimum and maximum of a figure over rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Median over rounds: robust to one disturbed round.
    pub median: f64,
    /// Worst/best rounds show how noisy the machine was.
    pub min: f64,
    /// See `min`.
    pub max: f64,
}

impl Spread {
    /// Spread of `values`; None when there is no finite value.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let finite = values.iter().copied().filter(|x| x.is_finite());
        Some(Spread {
            median: median(values)?,
            min: finite.clone().fold(f64::INFINITY, f64::min),
            max: finite.fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// `value / base`, or None when the ratio means nothing (a zero, negative
/// or non-finite reference): a server with 0 failures is not "infinitely"
/// better than one with 0.
pub fn ratio(value: f64, base: f64) -> Option<f64> {
    if !(base.is_finite() && value.is_finite()) || base <= 0.0 || value < 0.0 {
        return None;
    }
    Some(value / base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(500.0));
        assert_eq!(percentile(&v, 99.0), Some(990.0));
        assert_eq!(percentile(&v, 99.9), Some(999.0));
        assert_eq!(percentile(&v, 100.0), Some(1000.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        let small = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&small, 50.0), Some(2.0));
        assert_eq!(percentile(&small, 51.0), Some(3.0));
        assert_eq!(percentile(&small, 99.9), Some(4.0));
        assert_eq!(percentile(&[7.0], 99.9), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&v, 101.0), None);
    }

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        let s = Spread::of(&[10.0, 30.0, 20.0, 40.0, 5.0]).unwrap();
        assert_eq!(
            s,
            Spread {
                median: 20.0,
                min: 5.0,
                max: 40.0
            }
        );
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(50.0, 100.0), Some(0.5));
        assert_eq!(ratio(100.0, 100.0), Some(1.0));
        assert_eq!(ratio(0.0, 100.0), Some(0.0));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(0.0, 0.0), None);
        assert_eq!(ratio(1.0, f64::NAN), None);
        assert_eq!(ratio(f64::INFINITY, 1.0), None);
    }
}
