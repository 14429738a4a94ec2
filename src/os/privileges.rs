//! `--user` / `--group`: dropping root once the listeners are bound, as
//! memcached's `-u` and nginx's `user` do.
//!
//! The drop is glibc's `setgroups`, `setgid` and `setuid`, which change the
//! credentials of every thread of the process (the kernel keeps them per
//! thread; glibc signals each thread to make the same call), and is checked
//! afterwards: real, effective and saved ids all changed, and root cannot be
//! regained.

use std::ffi::CString;
use std::io;
use std::path::Path;

/// The user and group a process is to run as, looked up by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user's name, as given.
    pub user: String,
    /// Its uid.
    pub uid: libc::uid_t,
    /// The group's name (`--group`, or the user's primary group's gid as
    /// text when it has no name).
    pub group: String,
    /// The gid: `--group`'s, else the user's primary group.
    pub gid: libc::gid_t,
}

/// Looks `user` (and `group`, else the user's primary group) up in the
/// system's user database. Err: one line saying what is missing.
pub fn lookup(user: &str, group: Option<&str>) -> Result<Identity, String> {
    let (uid, primary) = passwd(user)
        .map_err(|e| format!("--user {user}: cannot look it up: {e}"))?
        .ok_or_else(|| format!("--user {user}: no such user"))?;
    let (group, gid) = match group {
        Some(name) => {
            let gid = group_id(name)
                .map_err(|e| format!("--group {name}: cannot look it up: {e}"))?
                .ok_or_else(|| format!("--group {name}: no such group"))?;
            (name.to_string(), gid)
        }
        None => (primary.to_string(), primary),
    };
    Ok(Identity {
        user: user.to_string(),
        uid,
        group,
        gid,
    })
}

/// Runs a `get*nam_r` lookup of `name` with room for its strings, growing
/// the room while it says `ERANGE`: `call(name, buf, &mut found)` returns
/// the error number and sets `found` to whether there was an entry.
fn lookup_r<T>(
    name: &str,
    mut call: impl FnMut(&CString, &mut [libc::c_char], &mut bool) -> (libc::c_int, T),
) -> io::Result<Option<T>> {
    let name = CString::new(name).map_err(|_| io::Error::other("NUL in the name"))?;
    for tries in 0..8 {
        let mut buf = vec![0; 1024 << tries];
        let mut found = false;
        match call(&name, &mut buf, &mut found) {
            (0, value) if found => return Ok(Some(value)),
            (0 | libc::ENOENT | libc::ESRCH, _) => return Ok(None),
            (libc::ERANGE, _) => continue,
            (e, _) => return Err(io::Error::from_raw_os_error(e)),
        }
    }
    Err(io::Error::other("the entry is too large"))
}

/// `getpwnam_r`: (uid, primary gid) of `name`, `None` if there is no such user.
fn passwd(name: &str) -> io::Result<Option<(libc::uid_t, libc::gid_t)>> {
    lookup_r(name, |name, buf, found| {
        // SAFETY: passwd is plain data; all-zero is a valid value.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut entry: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, buf for its length.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut entry,
            )
        };
        *found = !entry.is_null();
        (rc, (pw.pw_uid, pw.pw_gid))
    })
}

/// `getgrnam_r`: the gid of `name`, `None` if there is no such group.
fn group_id(name: &str) -> io::Result<Option<libc::gid_t>> {
    lookup_r(name, |name, buf, found| {
        // SAFETY: group is plain data; all-zero is a valid value.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut entry: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, buf for its length.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut entry,
            )
        };
        *found = !entry.is_null();
        (rc, gr.gr_gid)
    })
}

/// The process's effective uid and gid.
fn effective() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: geteuid and getegid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Whether the process runs as `id` already (an upgrade's new process of a
/// server that dropped to it: it inherited the ids).
pub fn runs_as(id: &Identity) -> bool {
    effective() == (id.uid, id.gid)
}

/// Refuses what cannot work, before anything is bound: switching users
/// without being root, or a `--pid-file` whose directory `id` could not
/// write (the pid file is written once the process serves, after the drop,
/// and rewritten by an upgrade's new process and removed at exit).
pub fn check(id: &Identity, pid_file: Option<&Path>) -> Result<(), String> {
    let (euid, _) = effective();
    if !runs_as(id) && euid != 0 {
        return Err(format!(
            "--user {}: only root can switch users (this process runs as uid {euid})",
            id.user
        ));
    }
    let Some(dir) = pid_file.and_then(Path::parent) else {
        return Ok(());
    };
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|e| format!("--pid-file: {}: {e}", dir.display()))?;
    let mode = meta.mode();
    let writable = if meta.uid() == id.uid {
        mode & 0o200 != 0
    } else if meta.gid() == id.gid {
        mode & 0o020 != 0
    } else {
        mode & 0o002 != 0
    };
    if !writable && id.uid != 0 {
        return Err(format!(
            "--pid-file: {} is not writable by user {}: after the drop the pid file \
             could not be written, replaced by an upgrade or removed (give it a \
             directory the user owns, such as /run/conn-daemon)",
            dir.display(),
            id.user
        ));
    }
    Ok(())
}

/// Drops to `id` on every thread: supplementary groups to `id.gid` alone,
/// then the gid, then the uid (real, effective and saved). Nothing to do if
/// the process runs as `id` already. Err: the step that failed, or a drop
/// that did not take (root could be regained).
pub fn drop_to(id: &Identity) -> io::Result<()> {
    if runs_as(id) {
        return Ok(());
    }
    let what = |step: &str| {
        let e = io::Error::last_os_error();
        io::Error::new(e.kind(), format!("{step}: {e}"))
    };
    // SAFETY: one gid, read from a valid pointer for the call.
    if unsafe { libc::setgroups(1, &id.gid) } == -1 {
        return Err(what("setgroups"));
    }
    // SAFETY: setgid has no memory preconditions.
    if unsafe { libc::setgid(id.gid) } == -1 {
        return Err(what("setgid"));
    }
    // SAFETY: setuid has no memory preconditions.
    if unsafe { libc::setuid(id.uid) } == -1 {
        return Err(what("setuid"));
    }
    // The drop must not be undoable: with any id still 0, setuid(0) works.
    // SAFETY: setuid has no memory preconditions; it fails as it should.
    if id.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(io::Error::other("root could still be regained"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_its_group_are_found_and_nonsense_is_not() {
        let root = lookup("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(
            lookup("no-such-user-here", None).unwrap_err(),
            "--user no-such-user-here: no such user"
        );
        assert_eq!(
            lookup("root", Some("no-such-group-here")).unwrap_err(),
            "--group no-such-group-here: no such group"
        );
    }
}
