//! Finding the PostgreSQL server programs (initdb, pg_ctl, postgres) of the right version.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::ManagedPostgresError;

/// Where to look for the PostgreSQL server programs.
#[derive(Debug, Clone)]
pub struct Search {
    /// Only this directory, if set (`--pg-bin-dir`).
    pub explicit: Option<PathBuf>,
    /// The directories of `PATH`.
    pub path: Vec<PathBuf>,
    /// Roots holding one directory per version with a `bin/` inside.
    pub versioned_roots: Vec<PathBuf>,
}

impl Search {
    /// The usual places: `PATH`, `pg_config --bindir`, `/usr/lib/postgresql/*/bin`.
    pub fn from_env(explicit: Option<PathBuf>) -> Search {
        let path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Search {
            explicit,
            path,
            versioned_roots: vec![PathBuf::from("/usr/lib/postgresql")],
        }
    }

    /// Programs of major version `major`, for an existing data directory: PostgreSQL cannot
    /// run a data directory of another major version.
    pub fn find_version(&self, major: &str) -> Result<PathBuf, ManagedPostgresError> {
        let found = self.find()?;
        if major_version(&found).as_deref() == Some(major) {
            return Ok(found);
        }
        let versioned = self
            .versioned_roots
            .iter()
            .map(|root| root.join(major).join("bin"))
            .find(|dir| dir.join("pg_ctl").is_file() && dir.join("postgres").is_file());
        versioned.ok_or_else(|| ManagedPostgresError::Command {
            what: "finding PostgreSQL".into(),
            detail: format!(
                "the data directory was made by PostgreSQL {major}, but the programs found in {} \
                 are version {}; install PostgreSQL {major} (or upgrade the data with pg_upgrade)",
                found.display(),
                major_version(&found).unwrap_or_else(|| "unknown".into())
            ),
        })
    }

    /// The first directory that holds initdb, pg_ctl and postgres.
    pub fn find(&self) -> Result<PathBuf, ManagedPostgresError> {
        let has_all = |dir: &Path| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|p| dir.join(p).is_file())
        };
        if let Some(dir) = &self.explicit {
            return if has_all(dir) {
                Ok(dir.clone())
            } else {
                Err(ManagedPostgresError::NoBinaries {
                    searched: format!("in {}", dir.display()),
                })
            };
        }
        let mut candidates: Vec<PathBuf> = self.path.clone();
        // pg_config, if it is on PATH, knows where its server programs are.
        if let Some(pg_config) = self
            .path
            .iter()
            .map(|d| d.join("pg_config"))
            .find(|p| p.is_file())
        {
            if let Ok(out) = Command::new(pg_config).arg("--bindir").output() {
                if out.status.success() {
                    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    candidates.push(PathBuf::from(dir));
                }
            }
        }
        for root in &self.versioned_roots {
            let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .collect();
            // Newest version first.
            versions.sort_by_key(|v| std::cmp::Reverse(v.0));
            candidates.extend(versions.into_iter().map(|(_, dir)| dir));
        }
        candidates.into_iter().find(|d| has_all(d)).ok_or_else(|| {
            ManagedPostgresError::NoBinaries {
                searched: format!(
                    "on PATH, through pg_config --bindir, or in {}",
                    self.versioned_roots
                        .iter()
                        .map(|r| format!("{}/*/bin", r.display()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        })
    }
}

/// The major version of the programs in `bin_dir` (`pg_ctl (PostgreSQL) 15.18` -> `15`).
pub(super) fn major_version(bin_dir: &Path) -> Option<String> {
    let out = Command::new(bin_dir.join("pg_ctl"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split(')').nth(1)?.split_whitespace().next()?;
    Some(version.split('.').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        for p in ["initdb", "pg_ctl", "postgres"] {
            fs::write(dir.join(p), "").unwrap();
        }
    }

    #[test]
    fn finds_binaries_on_path_then_newest_versioned_dir() {
        let tmp = std::env::temp_dir().join(format!("linechat-search-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let root = tmp.join("lib");
        fake_bin(&root.join("13/bin"));
        fake_bin(&root.join("16/bin"));
        fs::create_dir_all(root.join("notes")).unwrap();
        let mut search = Search {
            explicit: None,
            path: vec![tmp.join("empty")],
            versioned_roots: vec![root.clone()],
        };
        assert_eq!(search.find().unwrap(), root.join("16/bin"));
        fake_bin(&tmp.join("onpath"));
        search.path.push(tmp.join("onpath"));
        assert_eq!(search.find().unwrap(), tmp.join("onpath"));
        let _ = fs::remove_dir_all(&tmp);
    }

    #[test]
    fn missing_binaries_name_the_package_and_the_alternative() {
        let search = Search {
            explicit: None,
            path: vec![],
            versioned_roots: vec![PathBuf::from("/nonexistent/postgresql")],
        };
        let message = search.find().unwrap_err().to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("--store memory"), "{message}");
        assert!(
            message.contains("/nonexistent/postgresql/*/bin"),
            "{message}"
        );
    }
}
