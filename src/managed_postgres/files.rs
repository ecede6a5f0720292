//! The files and directories the managed cluster needs, made safely when the server runs as
//! root: a symbolic (or hard) link planted where linechat creates, hands over or writes a
//! file is never followed, and a data directory that another user could plant one in is
//! refused.
//!
//! Every operation opens the path itself with `O_NOFOLLOW` and then works on the descriptor
//! (`fchown`, `fchmod`, `fstat`), so that nothing can be swapped in between a check and the
//! act; a file that is replaced is written under a new name and renamed over the old one,
//! which replaces a link instead of writing through it.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::ManagedPostgresError;

/// The write bits for group and others.
const GROUP_OR_OTHER_WRITE: u32 = 0o022;
const OTHER_WRITE: u32 = 0o002;
/// The sticky bit: in such a directory only an entry's owner may rename or remove it.
const STICKY: u32 = 0o1000;

/// Who may own what linechat opens, and who gets what it creates: the uids trusted besides
/// root, and the owner given to new files (the `postgres` user when we run as root).
#[derive(Debug, Clone, Copy)]
pub(super) struct Owners {
    /// The effective uid we run as.
    pub us: libc::uid_t,
    /// The user and group the cluster runs as, if not us (we are root).
    pub postgres: Option<(libc::uid_t, libc::gid_t)>,
}

impl Owners {
    fn trusted(&self, uid: libc::uid_t) -> bool {
        uid == 0 || uid == self.us || self.postgres.is_some_and(|(p, _)| p == uid)
    }

    /// Hands `file` to the postgres user, when there is one to hand it to.
    fn give(&self, file: &File) -> io::Result<()> {
        match self.postgres {
            Some((uid, gid)) => std::os::unix::fs::fchown(file, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }
}

/// Why a directory would let another user plant links where linechat works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exposure {
    /// Owned by a user other than us and root (who could change its permissions).
    OwnedByOther(libc::uid_t),
    /// Writable by others, and not sticky.
    Writable,
}

/// Whether a directory with this owner and mode is safe to work in: `leaf` is the data dir
/// itself (where linechat creates files), otherwise one of its parents. A parent may be
/// writable by others if it is sticky (as /tmp is): they cannot rename or remove what is
/// ours there. Group write counts as "others" for root, who must trust nobody; a user who
/// is not root may share a group-writable directory with their own group (as a umask of
/// 002 gives every directory they make).
pub(super) fn exposure(
    owner: libc::uid_t,
    mode: u32,
    us: libc::uid_t,
    leaf: bool,
) -> Option<Exposure> {
    if owner != 0 && owner != us {
        return Some(Exposure::OwnedByOther(owner));
    }
    let others = if us == 0 {
        GROUP_OR_OTHER_WRITE
    } else {
        OTHER_WRITE
    };
    let sticky_parent = !leaf && mode & STICKY != 0;
    (mode & others != 0 && !sticky_parent).then_some(Exposure::Writable)
}

/// How many symbolic links a data dir path may go through (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Finds the data directory that `given` names, creating what is missing, and returns its
/// real path (no links in it). The path is walked as given, one name at a time, the way the
/// kernel would resolve it, and refused unless no user but us and root can change where it
/// leads: every directory a name is looked up in must be safe (see [`exposure`]), every link
/// on the way must be ours or root's, and the data directory itself must be safe. So a link
/// planted on the way is refused before it is followed, and nothing is created anywhere
/// another user controls. (Resolving first and checking the result is not enough: it never
/// sees the directories the path went through, where the link was planted.)
pub(super) fn resolve_data_dir(
    given: &Path,
    us: libc::uid_t,
) -> Result<PathBuf, ManagedPostgresError> {
    // (joining an absolute path replaces the working directory, which getcwd gives real.)
    let absolute = std::env::current_dir()?.join(given);
    // The names still to walk, the next one last.
    let mut todo = names(&absolute);
    let mut real = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            // `real` has no links in it: its parent is the directory it was reached from.
            real.pop();
            continue;
        }
        check_dir(&real, us, false, given)?;
        let next = real.join(&name);
        let meta = match fs::symlink_metadata(&next) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Never follows a link (one planted meanwhile makes it fail, and is seen
                // below); 0755 whatever the umask, so postgres can enter.
                match fs::DirBuilder::new().mode(0o755).create(&next) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(io_error(&next, e))
                    }
                    _ => {}
                }
                fs::symlink_metadata(&next).map_err(|e| io_error(&next, e))?
            }
            other => other.map_err(|e| io_error(&next, e))?,
        };
        if meta.is_symlink() {
            if meta.uid() != 0 && meta.uid() != us {
                return Err(unsafe_path(format!(
                    "{}, on the path to the data directory {}, is a symbolic link owned by \
                     another user (uid {}), who could point it anywhere",
                    next.display(),
                    given.display(),
                    meta.uid()
                )));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(io_error(&next, io::Error::from_raw_os_error(libc::ELOOP)));
            }
            let target = fs::read_link(&next).map_err(|e| io_error(&next, e))?;
            if target.is_absolute() {
                real = PathBuf::from("/");
            }
            todo.extend(names(&target));
        } else if meta.is_dir() {
            real = next;
        } else {
            return Err(io_error(&next, io::Error::other("not a directory")));
        }
    }
    check_dir(&real, us, true, given)?;
    Ok(real)
}

/// The names in `path`, last first (`..` kept; `.` and the root dropped).
fn names(path: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    names.reverse();
    names
}

/// Refuses `dir`, the data directory itself (`leaf`) or one on the way to it, if another
/// user could plant links in it or swap what it holds.
fn check_dir(
    dir: &Path,
    us: libc::uid_t,
    leaf: bool,
    given: &Path,
) -> Result<(), ManagedPostgresError> {
    let meta = fs::symlink_metadata(dir).map_err(|e| io_error(dir, e))?;
    let Some(why) = exposure(meta.uid(), meta.mode(), us, leaf) else {
        return Ok(());
    };
    let what = if leaf {
        format!("the data directory {}", dir.display())
    } else {
        format!(
            "{}, on the path to the data directory {},",
            dir.display(),
            given.display()
        )
    };
    let why = match why {
        Exposure::OwnedByOther(uid) => {
            format!("is owned by another user (uid {uid}), who could plant links in it")
        }
        Exposure::Writable => format!(
            "is writable by other users (mode {:o}), who could plant links in it",
            meta.mode() & 0o7777
        ),
    };
    Err(unsafe_path(format!("{what} {why}")))
}

/// An unsafe data directory error, saying what to do instead.
fn unsafe_path(what: String) -> ManagedPostgresError {
    ManagedPostgresError::UnsafeDataDir(format!(
        "{what}; choose a --data-dir that only you (and root) can write, in directories that \
         only you (and root) can write, such as /var/lib/linechat (chmod go-w fixes a \
         directory that is yours)"
    ))
}

/// An I/O error that names the path it happened on.
fn io_error(path: &Path, e: io::Error) -> ManagedPostgresError {
    ManagedPostgresError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Says that `path` is a link linechat will not follow, or passes `e` on.
fn refuse_link(path: &Path, e: io::Error) -> ManagedPostgresError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        ManagedPostgresError::UnsafeDataDir(format!(
            "{} is a symbolic link; linechat never follows links where it writes: remove it",
            path.display()
        ))
    } else {
        io_error(path, e)
    }
}

/// Checks that an opened file is a plain file or directory of a trusted owner, not a hard
/// link to something else.
fn check_opened(path: &Path, file: &File, owners: &Owners) -> Result<(), ManagedPostgresError> {
    let meta = file.metadata()?;
    let unsafe_file = |why: &str| {
        Err(ManagedPostgresError::UnsafeDataDir(format!(
            "{} {why}; linechat will not use it: remove it",
            path.display()
        )))
    };
    if !owners.trusted(meta.uid()) {
        return unsafe_file(&format!("belongs to another user (uid {})", meta.uid()));
    }
    if meta.is_file() && meta.nlink() != 1 {
        return unsafe_file("has other hard links");
    }
    if !meta.is_file() && !meta.is_dir() {
        return unsafe_file("is not a plain file or directory");
    }
    Ok(())
}

/// Opens the directory `path` without following a link, checks it is ours, gives it `mode`
/// and hands it to the postgres user.
pub(super) fn prepare_dir(
    path: &Path,
    mode: u32,
    owners: &Owners,
) -> Result<(), ManagedPostgresError> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(path)
        .map_err(|e| refuse_link(path, e))?;
    check_opened(path, &dir, owners)?;
    dir.set_permissions(fs::Permissions::from_mode(mode))?;
    owners.give(&dir)?;
    Ok(())
}

/// Makes sure the log file PostgreSQL appends to exists as a plain file of ours (created
/// 0600 if missing, never truncated) and belongs to the postgres user.
pub(super) fn prepare_log(path: &Path, owners: &Owners) -> Result<(), ManagedPostgresError> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| refuse_link(path, e))?;
    check_opened(path, &file, owners)?;
    if !file.metadata()?.is_file() {
        return Err(refuse_link(path, io::Error::other("not a plain file")));
    }
    owners.give(&file)?;
    Ok(())
}

/// Replaces `path` with a file holding `contents`, owned by the postgres user: written under
/// a scratch name (created afresh, never through a link) and renamed over `path`, which
/// replaces whatever was there, a link included, without writing to what it points at.
pub(super) fn replace_file(
    path: &Path,
    contents: &str,
    owners: &Owners,
) -> Result<(), ManagedPostgresError> {
    let mut scratch = path.as_os_str().to_owned();
    scratch.push(".linechat-new");
    let scratch = PathBuf::from(scratch);
    // remove_file removes a link itself, not its target.
    match fs::remove_file(&scratch) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&scratch)
        .map_err(|e| refuse_link(&scratch, e))?;
    file.write_all(contents.as_bytes())?;
    owners.give(&file)?;
    file.sync_all()?;
    fs::rename(&scratch, path)?;
    Ok(())
}

/// Reads a small file the cluster wrote (`PG_VERSION`, `postmaster.pid`) without following
/// a link: whoever runs as postgres could point one at a file only root may read.
pub(super) fn read_small(path: &Path) -> io::Result<String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut text = String::new();
    (&mut file).take(64 * 1024).read_to_string(&mut text)?;
    Ok(text)
}

/// Opens (creating it if need be) the data directory's lock file, never through a link.
pub(super) fn open_lock(path: &Path) -> Result<File, ManagedPostgresError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| refuse_link(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_can_write_is_exposed_unless_a_sticky_parent() {
        let me = 1000;
        assert_eq!(exposure(me, 0o40755, me, true), None);
        assert_eq!(exposure(0, 0o40755, me, true), None);
        assert_eq!(exposure(me, 0o40777, me, true), Some(Exposure::Writable));
        // /tmp: fine above the data dir, never as the data dir itself.
        assert_eq!(exposure(0, 0o41777, me, false), None);
        assert_eq!(exposure(0, 0o41777, me, true), Some(Exposure::Writable));
        assert_eq!(exposure(0, 0o40777, me, false), Some(Exposure::Writable));
        assert_eq!(
            exposure(1001, 0o40755, me, false),
            Some(Exposure::OwnedByOther(1001))
        );
    }

    #[test]
    fn group_write_is_trusted_by_users_not_by_root() {
        assert_eq!(exposure(1000, 0o40775, 1000, true), None);
        assert_eq!(exposure(0, 0o40775, 0, true), Some(Exposure::Writable));
        assert_eq!(exposure(0, 0o40775, 0, false), Some(Exposure::Writable));
    }

    #[test]
    fn the_data_dir_path_is_checked_as_given_before_anything_is_made() {
        let base = std::env::temp_dir().join(format!("linechat-resolve-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        let base = base.canonicalize().unwrap();
        let us = unsafe { libc::geteuid() };
        let victim = base.join("victim");
        fs::create_dir(&victim).unwrap();

        // A link in a directory others can write (it could have been planted there).
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&victim, open.join("data")).unwrap();
        let e = resolve_data_dir(&open.join("data/sub"), us)
            .unwrap_err()
            .to_string();
        assert!(e.contains("on the path to the data directory"), "{e}");
        assert!(e.contains("writable by other users (mode 777)"), "{e}");
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0, "nothing made");

        // Our own link, in our own directory, is followed; what is missing is made.
        std::os::unix::fs::symlink("victim", base.join("ours")).unwrap();
        let real = resolve_data_dir(&base.join("ours/a/../b"), us).unwrap();
        assert_eq!(real, victim.join("b"));
        assert!(victim.join("a").is_dir() && victim.join("b").is_dir());
        assert_eq!(
            fs::metadata(victim.join("b")).unwrap().mode() & 0o777,
            0o755
        );

        // The data directory itself may not be writable by others.
        let e = resolve_data_dir(&open, us).unwrap_err().to_string();
        assert!(e.contains("the data directory"), "{e}");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn links_are_replaced_or_refused_never_followed() {
        let dir = std::env::temp_dir().join(format!("linechat-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        let target = dir.join("target");
        fs::write(&target, "keep").unwrap();
        let owners = Owners {
            us: unsafe { libc::geteuid() },
            postgres: None,
        };

        let conf = dir.join("conf");
        std::os::unix::fs::symlink(&target, &conf).unwrap();
        replace_file(&conf, "new", &owners).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert!(!fs::symlink_metadata(&conf).unwrap().is_symlink());
        assert_eq!(fs::read_to_string(&conf).unwrap(), "new");

        let log = dir.join("log");
        std::os::unix::fs::symlink(&target, &log).unwrap();
        let e = prepare_log(&log, &owners).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(read_small(&log).is_err());
        let dangling = dir.join("dangling");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        assert!(prepare_log(&dangling, &owners).is_err());
        assert!(
            !dir.join("nowhere").exists(),
            "nothing created through the link"
        );

        let hard = dir.join("hard");
        fs::hard_link(&target, &hard).unwrap();
        let e = prepare_log(&hard, &owners).unwrap_err().to_string();
        assert!(e.contains("hard links"), "{e}");

        prepare_log(&dir.join("fresh.log"), &owners).unwrap();
        let meta = fs::metadata(dir.join("fresh.log")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        let _ = fs::remove_dir_all(&dir);
    }
}
