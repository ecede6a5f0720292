//! Which OS user the server runs as once it has started, and the switch to it.
//!
//! Started as root (to bind a low port, or to run its own PostgreSQL as `postgres`), the
//! binary gives root up once its listener is bound and its store is open: by default to the
//! `postgres` user that owns the managed cluster (so that it can still restart and stop it),
//! or to `nobody` when it runs none. `--user` chooses another user; `--user root` stays root.
//! Only the binary switches: the library's server (and the tests that run it in-process)
//! never changes its process's user.

use std::ffi::{CStr, CString};
use std::io;

/// The name that means "stay root" for `--user`.
pub const STAY_ROOT: &str = "root";
/// Whom a root server without a managed cluster becomes by default.
const UNPRIVILEGED: &str = "nobody";

/// An OS user, as the password database names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Why the server cannot run as the user it should.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("there is no user named {0:?} on this system (--user)")]
    NoSuchUser(String),
    #[error("cannot look up user {name:?}: {source}")]
    Lookup { name: String, source: io::Error },
    #[error(
        "--user {0} needs the server to be started as root (it runs as uid {1}); start it as \
         root or leave --user out"
    )]
    NotRoot(String, libc::uid_t),
    #[error(
        "--user {0}: the server's own PostgreSQL runs as `{1}`, and only that user (or root) \
         can restart and stop it; use --user {1} (the default), --user root, or --database-url"
    )]
    ManagedNeedsOwner(String, &'static str),
    #[error("cannot become user {name}: {call} failed: {source}")]
    Switch {
        name: String,
        call: &'static str,
        source: io::Error,
    },
    #[error("became user {0}, but could still get root back: refusing to run")]
    StillRoot(String),
}

/// What the binary does about its user after start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Keep the user it was started as.
    Stay,
    /// Switch to this account.
    Become(Account),
}

/// Decides, before anything is started, whom to run as: `requested` is `--user`, `root`
/// whether the process is root now, `cluster_user` the user that runs the managed PostgreSQL
/// if the server runs one. Looks the account up now, so that a bad name fails at once.
pub fn plan(
    requested: Option<&str>,
    root: bool,
    cluster_user: Option<&'static str>,
) -> Result<Plan, PrivilegeError> {
    let Some(name) = choose(requested, root, cluster_user)? else {
        return Ok(Plan::Stay);
    };
    let account = lookup(name)?;
    if !root {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        return if account.uid == uid {
            Ok(Plan::Stay)
        } else {
            Err(PrivilegeError::NotRoot(name.to_string(), uid))
        };
    }
    Ok(Plan::Become(account))
}

/// The pure part of [`plan`]: the name of the user to become, or `None` to stay.
fn choose<'a>(
    requested: Option<&'a str>,
    root: bool,
    cluster_user: Option<&'static str>,
) -> Result<Option<&'a str>, PrivilegeError> {
    match requested {
        Some(STAY_ROOT) if root => Ok(None),
        Some(name) => match cluster_user {
            Some(owner) if root && name != owner => {
                Err(PrivilegeError::ManagedNeedsOwner(name.to_string(), owner))
            }
            _ => Ok(Some(name)),
        },
        None if root => Ok(Some(cluster_user.unwrap_or(UNPRIVILEGED))),
        None => Ok(None),
    }
}

impl Plan {
    /// Carries the plan out: for [`Plan::Become`], drops the supplementary groups, then sets
    /// the group, then the user (in that order: once the user is not root, the others can
    /// no longer be changed), and checks that root cannot be had back.
    pub fn apply(&self) -> Result<(), PrivilegeError> {
        let Plan::Become(account) = self else {
            return Ok(());
        };
        let fail = |call| PrivilegeError::Switch {
            name: account.name.clone(),
            call,
            source: io::Error::last_os_error(),
        };
        // SAFETY: plain system calls on integers and an empty list. glibc applies setgid and
        // setuid to every thread of the process, not only the calling one.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(fail("setgroups"));
            }
            if libc::setgid(account.gid) != 0 {
                return Err(fail("setgid"));
            }
            if libc::setuid(account.uid) != 0 {
                return Err(fail("setuid"));
            }
        }
        // SAFETY: as above; a setuid(0) that succeeds is exactly what this checks for.
        let regained = unsafe {
            libc::getuid() != account.uid
                || libc::geteuid() != account.uid
                || libc::getgid() != account.gid
                || libc::getegid() != account.gid
                || libc::setuid(0) == 0
        };
        if regained {
            return Err(PrivilegeError::StillRoot(account.name.clone()));
        }
        Ok(())
    }
}

/// True if the process runs as root (effective user id 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Looks `name` up in the password database (`/etc/passwd`, or whatever NSS is set up).
pub fn lookup(name: &str) -> Result<Account, PrivilegeError> {
    let no_such = || PrivilegeError::NoSuchUser(name.to_string());
    let c_name = CString::new(name).map_err(|_| no_such())?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: passwd is plain data that getpwnam_r fills in; its strings point into
        // `buf`, which outlives every use of them below.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(PrivilegeError::Lookup {
                name: name.to_string(),
                source: io::Error::from_raw_os_error(rc),
            });
        }
        if found.is_null() {
            return Err(no_such());
        }
        // SAFETY: on success pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(entry.pw_name) }
            .to_string_lossy()
            .into_owned();
        return Ok(Account {
            name,
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_becomes_the_cluster_owner_or_nobody_unless_told() {
        assert_eq!(
            choose(None, true, Some("postgres")).unwrap(),
            Some("postgres")
        );
        assert_eq!(choose(None, true, None).unwrap(), Some("nobody"));
        assert_eq!(choose(Some("chat"), true, None).unwrap(), Some("chat"));
        assert_eq!(choose(Some("root"), true, None).unwrap(), None);
        assert_eq!(choose(Some("root"), true, Some("postgres")).unwrap(), None);
        assert_eq!(
            choose(Some("postgres"), true, Some("postgres")).unwrap(),
            Some("postgres")
        );
    }

    #[test]
    fn a_user_that_could_not_stop_the_managed_cluster_is_refused() {
        let e = choose(Some("nobody"), true, Some("postgres")).unwrap_err();
        assert!(matches!(e, PrivilegeError::ManagedNeedsOwner(..)), "{e}");
        assert!(e.to_string().contains("--user postgres"), "{e}");
    }

    #[test]
    fn not_root_stays_unless_a_user_is_named() {
        assert_eq!(choose(None, false, Some("postgres")).unwrap(), None);
        assert_eq!(choose(None, false, None).unwrap(), None);
        // Checked against the current user by `plan`.
        assert_eq!(choose(Some("root"), false, None).unwrap(), Some("root"));
    }

    #[test]
    fn looks_up_root_and_refuses_unknown_names() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(matches!(
            lookup("no-such-user-linechat"),
            Err(PrivilegeError::NoSuchUser(_))
        ));
        assert!(matches!(lookup("a\0b"), Err(PrivilegeError::NoSuchUser(_))));
    }
}
