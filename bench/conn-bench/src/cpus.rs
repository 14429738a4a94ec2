//! Which CPUs the servers and the generator get.
//!
//! On a shared core the generator steals cycles from the server it measures
//! (and the other way round), so with more than one CPU the servers get one
//! set and the generator the rest. Every server gets the same set, so none
//! is favoured; they run one at a time anyway.

use crate::args::parse_cpu_list;

/// The split: CPUs for servers and for the generator (disjoint, non-empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinning {
    /// Servers' CPUs.
    pub server: Vec<usize>,
    /// Generator's (and conn-bench's own) CPUs.
    pub generator: Vec<usize>,
}

/// The CPUs this process may run on (`Cpus_allowed_list`, which honours
/// an outer `taskset` or cgroup), or None if /proc does not say.
pub fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list).ok()
}

/// Splits `allowed`: servers get `requested` (a CPU list) or else the lower
/// half, the generator gets the rest. Ok(None) when there is only one CPU,
/// where pinning would put both on it anyway.
pub fn plan(allowed: &[usize], requested: Option<&str>) -> Result<Option<Pinning>, String> {
    let server = match requested {
        Some(list) => {
            let cpus = parse_cpu_list(list)?;
            if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
                return Err(format!(
                    "--server-cpus: CPU {bad} is not available (allowed: {allowed:?})"
                ));
            }
            cpus
        }
        None if allowed.len() < 2 => return Ok(None),
        None => allowed[..allowed.len() / 2].to_vec(),
    };
    let generator: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !server.contains(c))
        .collect();
    if generator.is_empty() {
        return Err("--server-cpus leaves no CPU for the load generator".into());
    }
    Ok(Some(Pinning { server, generator }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cpus() {
        assert_eq!(plan(&[0], None), Ok(None));
        assert_eq!(
            plan(&[0, 1], None),
            Ok(Some(Pinning {
                server: vec![0],
                generator: vec![1]
            }))
        );
        assert_eq!(
            plan(&[0, 1, 2], None),
            Ok(Some(Pinning {
                server: vec![0],
                generator: vec![1, 2]
            }))
        );
        assert_eq!(
            plan(&[2, 3, 4, 5], Some("3,5")),
            Ok(Some(Pinning {
                server: vec![3, 5],
                generator: vec![2, 4]
            }))
        );
        assert!(plan(&[0, 1], Some("0-1")).unwrap_err().contains("no CPU"));
        assert!(plan(&[0, 1], Some("7"))
            .unwrap_err()
            .contains("not available"));
    }

    #[test]
    fn reads_allowed_cpus() {
        assert!(!allowed_cpus().expect("Cpus_allowed_list").is_empty());
    }
}
