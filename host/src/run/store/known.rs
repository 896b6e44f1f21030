//! What a single host's SQLite tables hold, remembered in memory as Bloom filters, so that
//! the look-ups of the decision path that usually find nothing (was this event seen in this
//! status? was this ingest key accepted?) skip the database when the answer is certainly no.
//!
//! A filter answers "absent" only for a key it was never given; "maybe" is looked up in the
//! database as before, so a filter can only cost a look-up, never change an answer, as long
//! as every key the table holds was given to it. That holds because the filter is built from
//! the table itself (on first use, inside the caller's transaction) and then given every key
//! this process inserts ([`Known::add`]); the host's state lock keeps any other `keel run`
//! from writing the file, and nothing else inserts decisions or ingest keys. A key added by a
//! batch that then rolls back, or a row the collector deletes, stays in the filter: a false
//! "maybe", one look-up. Once more keys were added than the filter was sized for, it is built
//! again from the table (which the collector has trimmed meanwhile) at twice the table's size:
//! about 5 bytes a row at most when built, and at least 128 KiB a table.
//!
//! PostgreSQL's fleet does not use them: other hosts insert into the same tables.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Mutex;

use super::sql::Conn;
use super::StoreError;

/// Bits per key: with [`PROBES`] probes, about one "maybe" in a hundred for absent keys.
const BITS_PER_KEY: usize = 10;
/// Bits set and tested per key.
const PROBES: u32 = 7;
/// The fewest keys a filter is sized for (128 KiB of bits).
const MIN_KEYS: usize = 1 << 16;
/// The words of a block: a key's probes all fall in one block of 512 bits, one cache line,
/// so that a look-up costs one miss of the processor's cache, not one per probe.
const BLOCK_WORDS: usize = 8;

/// One table's filter: a blocked Bloom filter.
struct Filter {
    bits: Vec<u64>,
    /// How many blocks of [`BLOCK_WORDS`] words `bits` holds (a power of two).
    blocks: usize,
    /// Keys given since it was built, those it was built from included.
    added: usize,
    /// How many keys it was sized for; past that it is built again.
    capacity: usize,
}

impl Filter {
    fn sized(keys: usize) -> Filter {
        let capacity = keys.saturating_mul(2).max(MIN_KEYS);
        let nbits = capacity
            .saturating_mul(BITS_PER_KEY)
            .checked_next_power_of_two()
            .unwrap_or(1 << 40)
            .max(64 * BLOCK_WORDS);
        let blocks = nbits / (64 * BLOCK_WORDS);
        Filter {
            bits: vec![0; blocks * BLOCK_WORDS],
            blocks,
            added: 0,
            capacity,
        }
    }

    /// The words and bits of `key`: its block from the hash's low bits, and [`PROBES`] bit
    /// positions in it from 9-bit slices of the hash mixed again.
    fn probes(blocks: usize, key: &str) -> impl Iterator<Item = (usize, u64)> {
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        let first = (h as usize & (blocks - 1)) * BLOCK_WORDS;
        let x = (h ^ (h >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (0..PROBES).map(move |i| {
            let pos = (x >> (64 - 9 * (i + 1))) & 511;
            (first + (pos / 64) as usize, 1u64 << (pos % 64))
        })
    }

    fn add(&mut self, key: &str) {
        for (w, bit) in Filter::probes(self.blocks, key) {
            if let Some(w) = self.bits.get_mut(w) {
                *w |= bit;
            }
        }
        self.added = self.added.saturating_add(1);
    }

    fn maybe(&self, key: &str) -> bool {
        Filter::probes(self.blocks, key)
            .all(|(w, bit)| self.bits.get(w).is_some_and(|w| w & bit != 0))
    }
}

/// A table's keys, as a filter built on first use.
pub(crate) struct Known {
    /// The query that lists every key of the table (its first column).
    all: &'static str,
    filter: Mutex<Option<Filter>>,
}

impl Known {
    /// The keys `all` lists.
    pub(crate) const fn new(all: &'static str) -> Known {
        Known {
            all,
            filter: Mutex::new(None),
        }
    }

    /// Whether the table may hold `key` (`false`: it certainly does not). Builds the filter
    /// from the table through `conn` first, when it has none or has outgrown it, but only
    /// inside a transaction (a batch, on the deciding thread): a look-up outside one (a
    /// runbook's, on the async runtime) is answered "maybe" rather than scan the table there.
    pub(crate) fn maybe(&self, conn: &Conn, key: &str) -> Result<bool, StoreError> {
        let mut f = self.filter.lock().map_err(|_| StoreError::Poisoned)?;
        if f.as_ref().is_none_or(|f| f.added > f.capacity) {
            if !conn.in_tx() {
                return Ok(true);
            }
            *f = Some(self.build(conn)?);
        }
        Ok(f.as_ref().is_none_or(|f| f.maybe(key)))
    }

    /// Tells the filter the table now holds `key` (once built: until then the table will).
    pub(crate) fn add(&self, key: &str) -> Result<(), StoreError> {
        let mut f = self.filter.lock().map_err(|_| StoreError::Poisoned)?;
        if let Some(f) = f.as_mut() {
            f.add(key);
        }
        Ok(())
    }

    fn build(&self, conn: &Conn) -> Result<Filter, StoreError> {
        let Conn::Lite(c) = conn else {
            // Never asked on PostgreSQL; were it, every key "maybe".
            let mut all = Filter::sized(0);
            all.bits.fill(u64::MAX);
            return Ok(all);
        };
        let n: i64 = c.query_row(&format!("SELECT COUNT(*) FROM ({})", self.all), [], |r| {
            r.get(0)
        })?;
        let mut f = Filter::sized(usize::try_from(n).unwrap_or(0));
        let mut st = c.prepare(self.all)?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            match r.get_ref(0)? {
                rusqlite::types::ValueRef::Text(t) => f.add(&String::from_utf8_lossy(t)),
                other => f.add(&format!("{other:?}")),
            }
        }
        Ok(f)
    }
}

/// The filters of a single host's SQLite store.
pub(crate) struct Tables {
    /// The decisions' ids: whether an event was seen in a status.
    pub(crate) decisions: Known,
    /// The ingest idempotency keys accepted.
    pub(crate) ingest_keys: Known,
}

impl Default for Tables {
    fn default() -> Tables {
        Tables {
            decisions: Known::new("SELECT decision_id FROM decisions"),
            ingest_keys: Known::new("SELECT key FROM ingest_keys"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_given_is_always_maybe_and_most_others_are_absent() {
        let mut f = Filter::sized(1000);
        for i in 0..1000 {
            f.add(&format!("key-{i}"));
        }
        assert!((0..1000).all(|i| f.maybe(&format!("key-{i}"))));
        let false_maybes = (0..10_000)
            .filter(|i| f.maybe(&format!("other-{i}")))
            .count();
        // Sized for 65,536 keys and holding 1,000: nearly none.
        assert!(false_maybes < 50, "{false_maybes} of 10000");
        // Full to its capacity: still about one in a hundred.
        let mut full = Filter::sized(MIN_KEYS / 2);
        for i in 0..full.capacity {
            full.add(&format!("key-{i}"));
        }
        assert!((0..full.capacity).all(|i| full.maybe(&format!("key-{i}"))));
        let false_maybes = (0..10_000)
            .filter(|i| full.maybe(&format!("other-{i}")))
            .count();
        assert!(false_maybes < 300, "{false_maybes} of 10000");
    }

    #[test]
    fn a_filter_is_built_from_the_table_and_rebuilt_past_its_capacity(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let c = rusqlite::Connection::open_in_memory()?;
        c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY); INSERT INTO t VALUES ('a'), ('b');")?;
        let conn = Conn::Lite(c);
        let known = Known::new("SELECT k FROM t");
        // Outside a transaction nothing is built: every key "maybe".
        assert!(known.maybe(&conn, "c")?);
        if let Conn::Lite(c) = &conn {
            c.execute_batch("BEGIN")?;
        }
        assert!(known.maybe(&conn, "a")?);
        assert!(known.maybe(&conn, "b")?);
        assert!(!known.maybe(&conn, "c")?);
        // Inserted and told: maybe.
        if let Conn::Lite(c) = &conn {
            c.execute("INSERT INTO t VALUES ('c')", [])?;
        }
        known.add("c")?;
        assert!(known.maybe(&conn, "c")?);
        // Inserted behind its back, then outgrown: the rebuild reads the table again.
        if let Conn::Lite(c) = &conn {
            c.execute("INSERT INTO t VALUES ('d')", [])?;
        }
        for i in 0..=MIN_KEYS * 2 {
            known.add(&format!("filler-{i}"))?;
        }
        assert!(known.maybe(&conn, "d")?);
        // And forgets what the table does not hold.
        let stale = (0..1000)
            .filter(|i| known.maybe(&conn, &format!("filler-{i}")).unwrap_or(true))
            .count();
        assert!(stale < 50, "{stale} of 1000");
        Ok(())
    }
}
