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

/// Whether two figures are indistinguishable by this measurement: their
/// medians differ by no more than the instrument's resolution (`a_res +
/// b_res`: each median is off by up to its own) or than the rounds' spread
/// (the larger min-max range of the two). A ratio between such figures would
/// only show noise. False when either has no finite value (no comparison at
/// all, which the ratio already says).
pub fn within_noise(a: &[f64], a_res: f64, b: &[f64], b_res: f64) -> bool {
    let range = |v: &[f64]| {
        let f = || v.iter().copied().filter(|x| x.is_finite());
        f().fold(f64::NEG_INFINITY, f64::max) - f().fold(f64::INFINITY, f64::min)
    };
    let (Some(ma), Some(mb)) = (median(a), median(b)) else {
        return false;
    };
    let resolution = a_res.max(0.0) + b_res.max(0.0);
    let spread = range(a).max(range(b)).max(0.0);
    (ma - mb).abs() <= resolution.max(spread)
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
    fn tells_noise_from_a_difference() {
        // The slow run: 10 ms ticks over 267 requests, one round.
        // 74.9 vs 99.9 µs/req is 2 vs 2.7 ticks: inside the rounding.
        let tick = 10_000.0 / 267.0;
        assert!(within_noise(&[74.9], 2.0 * tick, &[99.9], 2.0 * tick));
        // The same figures in ns (resolution ~0) do differ.
        assert!(!within_noise(&[74.9], 0.004, &[99.9], 0.004));
        // Rounds that overlap: the difference of the medians (10) is below
        // the spread of the noisier server (100 .. 130 = 30).
        assert!(within_noise(
            &[100.0, 130.0, 110.0],
            0.0,
            &[120.0, 121.0, 119.0],
            0.0
        ));
        // Tight rounds far apart: a real difference.
        assert!(!within_noise(
            &[100.0, 101.0, 99.0],
            0.0,
            &[150.0, 151.0, 149.0],
            0.0
        ));
        // Equal medians are always within noise; empty is no comparison.
        assert!(within_noise(&[5.0], 0.0, &[5.0], 0.0));
        assert!(!within_noise(&[], 0.0, &[5.0], 0.0));
        assert!(!within_noise(&[f64::NAN], 0.0, &[5.0], 0.0));
        // A difference just above the resolution and spread counts.
        assert!(!within_noise(&[10.0, 10.5], 0.1, &[11.1], 0.1));
        assert!(within_noise(&[10.0, 10.5], 0.1, &[10.7], 0.1));
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
