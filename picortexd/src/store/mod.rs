//! The canonical log (SPEC D1): SQLite in WAL mode, owned by one thread. Every call is a closure
//! run on that thread inside its own savepoint; the thread runs whatever calls are waiting as one
//! transaction and answers them only after the commit (group commit), so every acknowledged write
//! is durable (`synchronous=FULL`) and a burst of webhooks costs one fsync, not one each.
//!
//! The schema is described in `SCHEMA.md`; the migrations (`NNNN_*.sql`) are applied in order at
//! open, each in its own transaction, and the version is recorded in `PRAGMA user_version`.

pub mod admin;
pub mod authority;
pub mod channel;
pub mod media;
pub mod queries;

use std::path::Path;
use std::sync::mpsc;
use std::thread;

use rusqlite::{Connection, Transaction};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database thread is gone")]
    Gone,
    #[error("database commit failed: {0}")]
    Commit(String),
    #[error("database {path} has schema version {found}, newer than this picortexd knows ({known}); upgrade picortexd")]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
}

/// Migrations, in order. Index + 1 is the version a migration brings the database to.
const MIGRATIONS: &[&str] = &[
    include_str!("0001_initial.sql"),
    include_str!("0002_channel.sql"),
    include_str!("0003_authority.sql"),
    include_str!("0004_settings.sql"),
    include_str!("0005_consent.sql"),
    // Numbered 0006 for the merge of parallel branches (0004, 0005 are others'); the lead renumbers.
    include_str!("0006_media.sql"),
];

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&mut Transaction<'_>) -> Done + Send>;

/// Handle to the database thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn, path)?;
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("picortex-db".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Commit(e.to_string()))?;
        Ok(Self { tx })
    }

    /// Run `f` on the database thread, inside a savepoint of the current group transaction, and
    /// return its result once the group has committed.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (otx, orx) = oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |txn| {
            let r = match txn.savepoint() {
                Ok(mut sp) => match f(&sp) {
                    Ok(v) => sp.commit().map(|_| v).map_err(StoreError::from),
                    Err(e) => {
                        let _ = sp.rollback();
                        Err(e)
                    }
                },
                Err(e) => Err(e.into()),
            };
            Box::new(move |committed: Result<(), String>| {
                let r = match committed {
                    Ok(()) => r,
                    Err(e) => Err(StoreError::Commit(e)),
                };
                let _ = otx.send(r);
            })
        });
        self.tx.send(job).map_err(|_| StoreError::Gone)?;
        orx.await.map_err(|_| StoreError::Gone)?
    }

    /// `SELECT 1` through the same thread: proves the database answers (for /health and the
    /// watchdog).
    pub async fn ping(&self) -> bool {
        self.call(|t| Ok(t.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok()
    }
}

/// Where the copy made before migrating to `version` goes.
pub fn before_migration_path(db: &Path, version: i64) -> std::path::PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".before-v{version}"));
    db.with_file_name(name)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found,
            known,
        });
    }
    // A database with data in it is copied before it changes, so a migration that goes wrong
    // (or a downgrade) has the old one to go back to: picortex.db.before-v<known>, next to it.
    if found > 0 && found < known {
        let copy = before_migration_path(path, known);
        if !copy.exists() {
            let c = copy.to_string_lossy().into_owned();
            conn.execute("VACUUM INTO ?1", [&c])?;
            tracing::info!(copy = %c, from = found, to = known, "copied the database to {c} before migrating it from version {found} to {known}");
        }
    }
    // Migrations may rebuild a table (SQLite's documented way to change a column): foreign
    // keys are off while they run, and checked whole before each commits.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let t = conn.transaction()?;
        t.execute_batch(m)?;
        let broken: i64 =
            t.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })?;
        if broken > 0 {
            return Err(StoreError::Commit(format!(
                "migration {} leaves {broken} broken references; database left at version {}",
                i + 1,
                i
            )));
        }
        t.pragma_update(None, "user_version", (i + 1) as i64)?;
        t.commit()?;
        tracing::info!(version = i + 1, "database migrated");
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// The database thread: take one job, then every job already waiting (up to a bound), run them
/// all in one transaction, commit, answer.
fn run(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    const MAX_GROUP: usize = 512;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut txn = match conn.transaction() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a transaction");
                continue; // the jobs' senders drop, and their callers see StoreError::Gone
            }
        };
        let dones: Vec<Done> = jobs.into_iter().map(|j| j(&mut txn)).collect();
        let committed = txn.commit().map_err(|e| e.to_string());
        if let Err(e) = &committed {
            tracing::error!(error = %e, "commit failed");
        }
        for d in dones {
            d(committed.clone());
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrates_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).unwrap();
        assert!(s.ping().await);
        let v: i64 = s
            .call(|t| Ok(t.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        // Reopening applies nothing twice.
        drop(s);
        let s = Store::open(&dir.path().join("t.db")).unwrap();
        assert!(s.ping().await);
    }

    #[test]
    fn a_database_is_copied_before_it_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        {
            let c = Connection::open(&db).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute("INSERT INTO events VALUES ('a','x',0,'r','{}')", [])
                .unwrap();
        }
        drop(Store::open(&db).unwrap());
        let known = MIGRATIONS.len() as i64;
        let copy = before_migration_path(&db, known);
        assert_eq!(copy, dir.path().join(format!("t.db.before-v{known}")));
        let c = Connection::open(&copy).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1, "the copy is of the database before the migration");
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        // A new database, or one already current, is not copied.
        let fresh = dir.path().join("new.db");
        drop(Store::open(&fresh).unwrap());
        drop(Store::open(&fresh).unwrap());
        assert!(!before_migration_path(&fresh, known).exists());
    }

    #[tokio::test]
    async fn a_failing_call_does_not_undo_its_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db")).unwrap();
        let ok = s.call(|t| {
            t.execute("INSERT INTO events VALUES ('a','x',0,'r','{}')", [])?;
            Ok(())
        });
        let bad = s.call(|t| {
            t.execute("INSERT INTO events VALUES ('b','x',0,'r','{}')", [])?;
            t.execute("INSERT INTO nosuchtable VALUES (1)", [])?;
            Ok(())
        });
        let (a, b) = tokio::join!(ok, bad);
        assert!(a.is_ok());
        assert!(b.is_err());
        let ids: Vec<String> = s
            .call(|t| {
                let mut st = t.prepare("SELECT event_id FROM events ORDER BY 1")?;
                let v = st
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                Ok(v)
            })
            .await
            .unwrap();
        assert_eq!(ids, vec!["a".to_owned()]);
    }

    #[tokio::test]
    async fn migration_3_keeps_every_row_and_holds_old_chats_for_a_decision() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        {
            let mut c = Connection::open(&p).unwrap();
            for (i, m) in MIGRATIONS[..2].iter().enumerate() {
                let t = c.transaction().unwrap();
                t.execute_batch(m).unwrap();
                t.pragma_update(None, "user_version", (i + 1) as i64)
                    .unwrap();
                t.commit().unwrap();
            }
            c.execute_batch(
                "INSERT INTO chats (id, kind, session_id, created_at, updated_at) VALUES ('c', 'direct', 's', 0, 0);
                 INSERT INTO messages (linq_id, chat_id, direction, text, gate, created_at) VALUES ('m', 'c', 'inbound', 'hi', 'direct chat', 0);
                 INSERT INTO turns (id, chat_id, message_id, status, created_at, cost_usd) VALUES ('t', 'c', 1, 'queued', 0, 0.5);
                 INSERT INTO outbox (chat_id, turn_id, text, idempotency_key, status, next_attempt_at, created_at)
                   VALUES ('c', 't', 'yo', 'k', 'pending', 0, 0);",
            )
            .unwrap();
        }
        let s = Store::open(&p).unwrap();
        let row: (String, String, String, f64, String) = s
            .call(|t| {
                Ok(t.query_row(
                    "SELECT c.access, t.kind, t.status, t.cost_usd, o.text FROM chats c, turns t, outbox o",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(
            row,
            (
                "pending".into(),
                "answer".into(),
                "queued".into(),
                0.5,
                "yo".into()
            )
        );
        let why: String = s
            .call(|t| Ok(t.query_row("SELECT reason FROM gate_decisions", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(why, "direct chat", "an old decision's reason was lost");
        let fk: bool = s
            .call(|t| Ok(t.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert!(fk, "foreign keys are on again after migrating");
    }

    /// Migration 4: settings written by hand before it are converted or dropped, and from then
    /// on the log refuses exactly what `limits` (and `attention::Mode`) refuse.
    #[test]
    fn migration_7_types_the_settings_with_the_rules_of_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        let seven = MIGRATIONS
            .iter()
            .position(|m| m.contains("Migration 4"))
            .unwrap();
        {
            let mut c = Connection::open(&p).unwrap();
            for (i, m) in MIGRATIONS[..seven].iter().enumerate() {
                let t = c.transaction().unwrap();
                t.execute_batch(m).unwrap();
                t.pragma_update(None, "user_version", (i + 1) as i64)
                    .unwrap();
                t.commit().unwrap();
            }
            c.execute_batch(
                "INSERT INTO chats (id, kind, session_id, created_at, updated_at, memory_max, permission_mode, attention, daily_budget_usd)
                   VALUES ('a', 'group', 's', 0, 0, '512M', 'PLAN', 'Always', 'lots'),
                          ('b', 'group', 's', 0, 0, 'lots', 'yolo', 'loud', 3),
                          ('c', 'group', 's', 0, 0, 1024, NULL, NULL, 1e9);",
            )
            .unwrap();
        }
        drop(Store::open(&p).unwrap());
        let c = Connection::open(&p).unwrap();
        let row = |id: &str| -> String {
            c.query_row(
                "SELECT quote(memory_max) || '|' || quote(permission_mode) || '|' || quote(attention) || '|' || quote(daily_budget_usd) FROM chats WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(row("a"), "536870912|'plan'|'always'|NULL");
        assert_eq!(row("b"), "NULL|NULL|NULL|3.0");
        assert_eq!(row("c"), "NULL|NULL|NULL|NULL");
        let sets = |col: &str, v: &str| {
            c.execute(&format!("UPDATE chats SET {col} = {v} WHERE id = 'a'"), [])
        };
        for (v, ok) in [
            ("33554431", false),
            ("33554432", true),
            ("68719476736", true),
            ("68719476737", false),
            ("'512M'", false),
            ("NULL", true),
        ] {
            let rule = v
                .parse::<i64>()
                .map(|n| crate::limits::memory_max_bytes(n).is_ok())
                .unwrap_or(v == "NULL");
            assert_eq!(rule, ok, "limits disagrees on memory {v}");
            let r = sets("memory_max", v);
            assert_eq!(r.is_ok(), ok, "memory_max = {v}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("between 32M"), "{e}");
            }
        }
        for m in crate::limits::PERMISSION_MODES {
            assert!(sets("permission_mode", &format!("'{m}'")).is_ok(), "{m}");
        }
        assert!(sets("permission_mode", "'yolo'").is_err());
        for m in crate::attention::Mode::ALL {
            assert!(sets("attention", &format!("'{m}'")).is_ok(), "{m}");
        }
        assert!(sets("attention", "'loud'").is_err());
        for (v, ok) in [
            ("0", true),
            ("10000", true),
            ("10000.5", false),
            ("-1", false),
            ("'5'", true),
            ("'lots'", false),
        ] {
            assert_eq!(sets("daily_budget_usd", v).is_ok(), ok, "budget {v}");
        }
        assert!(
            crate::limits::budget_usd(10000.0).is_ok()
                && crate::limits::budget_usd(10000.5).is_err()
        );
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.db");
        {
            let c = Connection::open(&p).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let Err(e) = Store::open(&p) else {
            panic!("opened a newer schema")
        };
        assert!(e.to_string().contains("upgrade picortexd"), "{e}");
    }
}
