//! The store's side of [`HistoryStore`]: storing batches, reading pages and ranges of
//! history, and recording the names messages reference, each within `--db-timeout`.

use super::*;

/// The message in `row`'s columns `from` on: id, time, sender's name, text (the history
/// statements' order).
pub(super) fn stored_message(
    row: &Row,
    from: usize,
) -> Result<StoredMessage, tokio_postgres::Error> {
    let id: i64 = row.try_get(from)?;
    let at: DateTime<Utc> = row.try_get(from + 1)?;
    let nick: &str = row.try_get(from + 2)?;
    Ok(StoredMessage {
        id: id as MessageId,
        millis: at.timestamp_millis(),
        nick: nick.into(),
        text: row.try_get(from + 3)?,
    })
}

#[async_trait]
impl HistoryStore for PgStore {
    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<StoredMessage>, StoreError> {
        self.append_by(batch, Instant::now() + self.timeout).await
    }

    /// Everything, the retry too, before the one deadline.
    async fn append_by(
        &self,
        batch: &[NewMessage],
        deadline: Instant,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut stored = self.append_batch(batch, deadline, Names::Assumed).await;
        if let Err(BatchError::NameVanished(e)) = &stored {
            // A name NICK or JOIN did not record (NICK's records are skipped while too many
            // wait, or the database was down), or one emptied or restored under us: nothing
            // of the batch was stored, so record its names and try it once more.
            tracing::debug!("a room or user the batch names was missing; recording them: {e}");
            stored = self.append_batch(batch, deadline, Names::Record).await;
        }
        if stored.is_err() {
            // The failure may be a name the cache still holds (a restored or edited
            // database): record every name afresh next time.
            self.forget_names();
        }
        stored.map_err(StoreError::from)
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    async fn page(&self, room: &str, page: Page) -> Result<Vec<StoredMessage>, StoreError> {
        self.with_timeout("reading history", async {
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            let rows = match page {
                Page::Newest { before, limit } => {
                    let before = before.map_or(i64::MAX, to_db_id);
                    let limit = limit as i64;
                    let mut rows = busy
                        .0
                        .query(PAGE_NEWEST, &[&room, &before, &limit])
                        .await
                        .map_err(|e| self.failed(e))?;
                    rows.reverse();
                    rows
                }
                Page::Oldest {
                    after,
                    before,
                    limit,
                } => {
                    let after = to_db_id(after);
                    let before = before.map_or(i64::MAX, to_db_id);
                    let limit = limit as i64;
                    busy.0
                        .query(PAGE_OLDEST, &[&room, &after, &before, &limit])
                        .await
                        .map_err(|e| self.failed(e))?
                }
            };
            busy.done();
            rows.iter()
                .map(|row| stored_message(row, 0))
                .collect::<Result<_, _>>()
                .map_err(|e| self.unreadable(e))
        })
        .await
    }

    async fn read_ranges(
        &self,
        ranges: &[(Arc<str>, MessageId, MessageId)],
        limit: usize,
    ) -> Result<Vec<Vec<StoredMessage>>, StoreError> {
        self.read_notified(ranges, limit).await
    }

    async fn latest_id(&self, room: &str) -> Result<MessageId, StoreError> {
        self.with_timeout("reading history", async {
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            let rows = busy
                .0
                .query(LATEST_ID, &[&room])
                .await
                .map_err(|e| self.failed(e))?;
            busy.done();
            let id: i64 = rows
                .first()
                .ok_or_else(|| unavailable("the newest id's query returned no row"))?
                .try_get(0)
                .map_err(|e| self.unreadable(e))?;
            Ok(id as MessageId)
        })
        .await
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn subscribe(&self) -> Option<Result<crate::store::Subscription, StoreError>> {
        Some(self.open_subscription().await)
    }

    fn directory(&self) -> Option<&dyn crate::cluster::Directory> {
        Some(self)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_timeout("answering a probe", async {
            self.health.check()?;
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            busy.0
                .client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| self.failed(e))?;
            busy.done();
            Ok(())
        })
        .await
    }

    fn record_user(&self, nick: &str) {
        // Nothing for a known name; the rest are gathered and recorded together. Not cached:
        // a user who never speaks should cost no memory (their first message caches it).
        if !self.health.is_up() || self.known_users.lock().expect("name cache").contains(nick) {
            return;
        }
        self.user_recorder.record(nick);
    }

    async fn record_room(&self, room: &str) -> Result<(), StoreError> {
        // Asked even of a known room: a JOIN during a known outage is refused before the
        // room is entered, so its other members see nothing of it.
        self.health.check()?;
        let known = self.known_rooms.lock().expect("name cache").contains(room);
        if known {
            return Ok(());
        }
        self.with_timeout("recording a room", async {
            // Not cached: only names that messages reference are cached (those rows cannot be
            // deleted while messages reference them).
            let mut conn = self.connection().await?;
            let busy = Busy::new(&mut conn);
            busy.0
                .query(UPSERT_ROOM, &[&room])
                .await
                .map_err(|e| self.failed(e))?;
            busy.done();
            Ok(())
        })
        .await
    }
}
