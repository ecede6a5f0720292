//! Storing a batch: its names resolved inside the INSERT (each name once per batch, never a
//! cached id), one deadline for all of it, and the rows checked against the batch.

use super::*;

/// Whether a batch's names are recorded before its INSERT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Names {
    /// Not recorded: NICK and JOIN recorded them already, almost always (`recorder.rs`,
    /// `record_room`), and the INSERT looks every name up itself; if one is missing it stores
    /// nothing ([`BatchError::NameVanished`]) and the batch is tried again with
    /// [`Names::Record`].
    Assumed,
    /// Every name of the batch recorded first, all in one statement (one commit).
    Record,
}

impl PgStore {
    /// Stores a batch with one INSERT, all of it before one deadline. With [`Names::Record`]
    /// its names are recorded first, in one idempotent statement of their own. The INSERT is
    /// its own transaction.
    ///
    /// Until the INSERT is sent, a failure is a refusal ([`StoreError::Unavailable`]): the
    /// messages were never handed to the database, and their connection (which may have an
    /// upsert pending) is discarded, so they can never be stored. Once it is sent, only an
    /// `ERROR` answer proves it was not stored; no answer by the deadline, or a broken
    /// connection, is [`StoreError::OutcomeUnknown`]: a statement waiting on a frozen backend
    /// still runs when it wakes. Its connection is discarded too (never reused with the
    /// INSERT pending), and whatever becomes of it the server does not learn.
    pub(super) async fn append_batch(
        &self,
        batch: &[NewMessage],
        deadline: Instant,
        recording: Names,
    ) -> Result<Vec<StoredMessage>, BatchError> {
        let mut conn = self
            .before(deadline, "waiting for a connection", self.connection())
            .await?;
        let busy = Busy::new(&mut conn);
        let names = BatchNames::of(batch);
        if recording == Names::Record {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&names.users, &names.rooms];
            self.before(deadline, "recording names", async {
                let recorded = busy.0.query(RECORD_NAMES, &params).await;
                recorded.map(drop).map_err(|e| self.failed(e))
            })
            .await?;
        }
        // Prepared (if a statement before it made the connection forget it) while a failure
        // is still a refusal: nothing is sent yet.
        self.before(deadline, "preparing the INSERT", async {
            busy.0
                .prepared(INSERT_MESSAGES)
                .await
                .map(drop)
                .map_err(|e| self.failed(e))
        })
        .await?;
        let bodies: Vec<&str> = batch.iter().map(|m| m.text.as_str()).collect();
        // From here on the INSERT is on its way.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &names.rooms,
            &names.users,
            &names.room_of,
            &names.user_of,
            &bodies,
        ];
        // A statement made stale by a change of the schema is refused before it runs, and
        // prepared again and sent once more (`PgConnection::query`); a deadline or a broken
        // connection during that second preparation is reported as an unknown outcome,
        // though the first attempt was refused: on the safe side.
        let insert = busy.0.query(INSERT_MESSAGES, &params);
        let rows = match tokio::time::timeout_at(deadline, insert).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                let rolled_back =
                    proves_rolled_back(e.as_db_error().and_then(|db| db.parsed_severity()));
                let vanished = name_vanished(&e);
                let text = e.to_string();
                let refusal = self.failed(e);
                return Err(match (rolled_back, vanished) {
                    (true, true) => {
                        // An ERROR answer leaves the connection idle: it serves the retry.
                        busy.done();
                        BatchError::NameVanished(refusal)
                    }
                    (true, false) => refusal.into(),
                    (false, _) => StoreError::OutcomeUnknown(text).into(),
                });
            }
            Err(_) => {
                return Err(
                    StoreError::OutcomeUnknown(self.no_answer("confirming the INSERT")).into(),
                )
            }
        };
        busy.done();
        if rows.is_empty() && !batch.is_empty() {
            // A name is missing: nothing was inserted (INSERT_MESSAGES).
            return Err(BatchError::NameVanished(unavailable(
                "a room or user the batch names does not exist",
            )));
        }
        // Stored messages now reference these names: they cannot be deleted (schema.sql).
        self.remember_names(&names.users, &names.rooms);
        let rows = in_batch_order(&rows, &names).map_err(|e| match e {
            InBatchOrder::Unreadable(e) => {
                // Committed, as below: the outcome for each message is unknown.
                self.log_unreadable(&e);
                StoreError::OutcomeUnknown(format!("the stored rows cannot be read: {e}"))
            }
            InBatchOrder::Mismatch(e) => e,
        })?;
        Ok(batch
            .iter()
            .zip(rows)
            .map(|(m, (id, at))| StoredMessage {
                id: id as MessageId,
                millis: at.timestamp_millis(),
                nick: m.nick.clone(),
                text: m.text.clone(),
            })
            .collect())
    }
}

/// A batch's room and user names, each once, and each message's place in them (1-based, as
/// SQL arrays count): the INSERT looks each name up once, however many messages use it.
#[derive(Debug, PartialEq, Eq)]
struct BatchNames<'a> {
    rooms: Vec<&'a str>,
    users: Vec<&'a str>,
    room_of: Vec<i32>,
    user_of: Vec<i32>,
}

impl<'a> BatchNames<'a> {
    fn of(batch: &'a [NewMessage]) -> Self {
        let mut rooms = Distinct::default();
        let mut users = Distinct::default();
        let room_of = batch.iter().map(|m| rooms.place(&m.room)).collect();
        let user_of = batch.iter().map(|m| users.place(&m.nick)).collect();
        BatchNames {
            rooms: rooms.names,
            users: users.names,
            room_of,
            user_of,
        }
    }
}

/// Names in order of first use, and where each is.
#[derive(Default)]
struct Distinct<'a> {
    names: Vec<&'a str>,
    places: HashMap<&'a str, i32>,
}

impl<'a> Distinct<'a> {
    /// The 1-based place of `name`, added if new.
    fn place(&mut self, name: &'a str) -> i32 {
        let next = self.names.len() as i32 + 1;
        let place = *self.places.entry(name).or_insert(next);
        if place == next {
            self.names.push(name);
        }
        place
    }
}

/// Why the inserted rows could not be put in batch order. Either way the batch committed.
enum InBatchOrder {
    /// A column of them could not be read (its type changed under the server).
    Unreadable(tokio_postgres::Error),
    /// They do not match the batch.
    Mismatch(StoreError),
}

/// The inserted rows as (id, time) in batch order. Identity values are drawn in insertion
/// order, which is the order of the arrays; each row is checked against the batch anyway (one
/// row per message, and the rows of one room or user name carry one id, different from the
/// other names'), so that a message can never be acknowledged with another message's id.
fn in_batch_order(
    rows: &[Row],
    names: &BatchNames,
) -> Result<Vec<(i64, DateTime<Utc>)>, InBatchOrder> {
    let read = |r: &Row| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
    let mut rows: Vec<(i64, DateTime<Utc>, i64, i64)> = rows
        .iter()
        .map(read)
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(InBatchOrder::Unreadable)?;
    rows.sort_unstable_by_key(|r| r.0);
    let room_ids = rows.iter().map(|r| r.2);
    let user_ids = rows.iter().map(|r| r.3);
    let matches = rows.len() == names.room_of.len()
        && one_id_per_name(&names.room_of, names.rooms.len(), room_ids)
        && one_id_per_name(&names.user_of, names.users.len(), user_ids);
    if !matches {
        // Cannot happen while PostgreSQL inserts in the order asked; if it ever does, say so
        // loudly rather than acknowledge a message with another's id.
        // (Committed, so not a refusal: the outcome for each message is unknown.)
        tracing::error!("the stored rows do not match the batch; refusing to acknowledge it");
        return Err(InBatchOrder::Mismatch(StoreError::OutcomeUnknown(
            "the stored rows do not match the batch".into(),
        )));
    }
    Ok(rows.into_iter().map(|r| (r.0, r.1)).collect())
}

/// Whether the ids, row by row, follow the names' places: one id per place (1-based), and a
/// different one for each place.
fn one_id_per_name(places: &[i32], count: usize, ids: impl Iterator<Item = i64>) -> bool {
    let mut id_of: Vec<Option<i64>> = vec![None; count];
    for (&place, id) in places.iter().zip(ids) {
        let Some(slot) = id_of.get_mut(place as usize - 1) else {
            return false;
        };
        if *slot.get_or_insert(id) != id {
            return false;
        }
    }
    let mut ids: Vec<i64> = id_of.into_iter().flatten().collect();
    let named = ids.len();
    ids.sort_unstable();
    ids.dedup();
    ids.len() == named
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(room: &str, nick: &str) -> NewMessage {
        NewMessage {
            room: room.into(),
            nick: nick.into(),
            text: "x".into(),
        }
    }

    #[test]
    fn a_batch_names_each_room_and_user_once_in_order_of_first_use() {
        let batch = [
            message("b", "carol"),
            message("a", "alice"),
            message("b", "alice"),
            message("c", "carol"),
        ];
        assert_eq!(
            BatchNames::of(&batch),
            BatchNames {
                rooms: vec!["b", "a", "c"],
                users: vec!["carol", "alice"],
                room_of: vec![1, 2, 1, 3],
                user_of: vec![1, 2, 2, 1],
            }
        );
        assert!(one_id_per_name(&[1, 2, 1, 3], 3, [7, 5, 7, 9].into_iter()));
        assert!(!one_id_per_name(&[1, 2, 1, 3], 3, [7, 5, 8, 9].into_iter()));
        assert!(!one_id_per_name(&[1, 2, 1, 3], 3, [7, 5, 7, 5].into_iter()));
        assert_eq!(
            BatchNames::of(&[]),
            BatchNames {
                rooms: vec![],
                users: vec![],
                room_of: vec![],
                user_of: vec![],
            }
        );
    }
}
