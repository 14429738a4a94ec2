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

/// What to do for one sweep value (or the one run without `--threads`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Pin servers and generator to these sets.
    Pinned(Pinning),
    /// Run unpinned (one CPU only, or `--no-pin`).
    Unpinned,
    /// Skip this thread count; the reason goes into the notes.
    Skip(String),
}

/// Splits `allowed` for `threads` server threads (None: no sweep). Servers
/// get `server_list` if given, else the first `threads` allowed CPUs, else
/// (no sweep) the lower half; the generator gets `client_list` if given, else
/// the rest. A sweep value with no CPU left for the generator is skipped: run
/// on shared CPUs, the figures would measure the contention, not the server.
pub fn plan(
    allowed: &[usize],
    threads: Option<u32>,
    server_list: Option<&str>,
    client_list: Option<&str>,
) -> Result<Plan, String> {
    let within = |flag: &str, list: &str| -> Result<Vec<usize>, String> {
        let cpus = parse_cpu_list(list)?;
        match cpus.iter().find(|c| !allowed.contains(c)) {
            Some(bad) => Err(format!(
                "{flag}: CPU {bad} is not available (allowed: {allowed:?})"
            )),
            None => Ok(cpus),
        }
    };
    let server = match (server_list, threads) {
        (Some(list), _) => within("--server-cpus", list)?,
        (None, Some(t)) if t as usize >= allowed.len() => {
            return Ok(Plan::Skip(format!(
                "threads={t} skipped: it needs {t} server CPUs plus at least one for the load \
                 generator, and this machine allows {} ({allowed:?})",
                allowed.len()
            )))
        }
        (None, Some(t)) => allowed[..t as usize].to_vec(),
        (None, None) if allowed.len() < 2 && client_list.is_none() => return Ok(Plan::Unpinned),
        (None, None) => allowed[..allowed.len() / 2].to_vec(),
    };
    let generator: Vec<usize> = match client_list {
        Some(list) => within("--client-cpus", list)?,
        None => allowed
            .iter()
            .copied()
            .filter(|c| !server.contains(c))
            .collect(),
    };
    if let Some(both) = generator.iter().find(|c| server.contains(c)) {
        return Err(format!(
            "CPU {both} is in both the server and the client CPUs"
        ));
    }
    if generator.is_empty() || server.is_empty() {
        return match threads {
            Some(t) => Ok(Plan::Skip(format!(
                "threads={t} skipped: no CPU is left for the load generator"
            ))),
            None => Err("--server-cpus leaves no CPU for the load generator".into()),
        };
    }
    Ok(Plan::Pinned(Pinning { server, generator }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned(server: &[usize], generator: &[usize]) -> Result<Plan, String> {
        Ok(Plan::Pinned(Pinning {
            server: server.to_vec(),
            generator: generator.to_vec(),
        }))
    }

    #[test]
    fn splits_cpus() {
        assert_eq!(plan(&[0], None, None, None), Ok(Plan::Unpinned));
        assert_eq!(plan(&[0, 1], None, None, None), pinned(&[0], &[1]));
        assert_eq!(plan(&[0, 1, 2], None, None, None), pinned(&[0], &[1, 2]));
        assert_eq!(
            plan(&[2, 3, 4, 5], None, Some("3,5"), None),
            pinned(&[3, 5], &[2, 4])
        );
        assert_eq!(
            plan(&[0, 1, 2, 3], None, Some("0"), Some("3")),
            pinned(&[0], &[3])
        );
        assert!(plan(&[0, 1], None, Some("0-1"), None)
            .unwrap_err()
            .contains("no CPU"));
        assert!(plan(&[0, 1], None, Some("7"), None)
            .unwrap_err()
            .contains("not available"));
        assert!(plan(&[0, 1], None, None, Some("9"))
            .unwrap_err()
            .contains("--client-cpus"));
        assert!(plan(&[0, 1, 2], None, Some("0,1"), Some("1,2"))
            .unwrap_err()
            .contains("both"));
    }

    #[test]
    fn splits_cpus_per_sweep_value() {
        let all: Vec<usize> = (0..16).collect();
        assert_eq!(plan(&all, Some(1), None, None), pinned(&[0], &all[1..]));
        assert_eq!(
            plan(&all, Some(4), None, None),
            pinned(&[0, 1, 2, 3], &all[4..])
        );
        // On two CPUs only threads=1 leaves the generator a CPU.
        assert_eq!(plan(&[0, 1], Some(1), None, None), pinned(&[0], &[1]));
        for t in [2, 4] {
            match plan(&[0, 1], Some(t), None, None) {
                Ok(Plan::Skip(note)) => {
                    assert!(note.contains(&format!("threads={t} skipped")), "{note}")
                }
                other => panic!("threads={t}: {other:?}"),
            }
        }
        // One CPU: nothing for the generator.
        assert!(matches!(plan(&[0], Some(1), None, None), Ok(Plan::Skip(_))));
        // Overrides win over the count.
        assert_eq!(
            plan(&all, Some(2), Some("4-5"), Some("8-9")),
            pinned(&[4, 5], &[8, 9])
        );
    }

    #[test]
    fn reads_allowed_cpus() {
        assert!(!allowed_cpus().expect("Cpus_allowed_list").is_empty());
    }
}
