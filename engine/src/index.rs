//! The policy index: which policies can match an event, decided from the tests every policy
//! makes at the top level of its `when`, before any expression runs.
//!
//! A policy's `when` is a conjunction at its top level; some of its conjuncts are *atoms*:
//! `field == "v"`, `field in ["a", "b"]`, `field == "a" || field == "b"` over a string field
//! or a resource tag, and `has(field)` / `"k" in event.resource.tags`. CEL's `&&` is
//! commutative over errors (a false conjunct absorbs an error on the other side, and the
//! native evaluator and the `cel` crate agree on it), so when one atom is false for an event,
//! the whole `when` is false, whatever the other conjuncts would do. The index keeps, per
//! event kind and per key (field or tag) the atoms test, the policies each value admits; an
//! event then starts from the policies of its kind and, for each key, keeps those whose atoms
//! on that key admit the event's value: a discrimination network one level deep, with every
//! atom of every policy used, not only the most selective one.
//!
//! An atom can only exclude what evaluation would find false. A key the event lacks makes an
//! equality atom an *error*, not false (the error must reach `Decision.errors` unless another
//! conjunct absorbs it), so only `has()` atoms exclude on an absent key; an absent parent
//! object (`event.maintenance` on a health event) makes `has()` an error too, and excludes
//! nothing.
//!
//! Sets are bitsets over the policies in rank order (bit `i` is policy `i`), so the result
//! comes out already in the order the policies are evaluated in.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hasher;

use crate::event::Event;
use crate::fields::{self, FieldId, FieldValue};

/// What an atom reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// A string field of the event.
    Field(FieldId),
    /// `event.resource.tags.<key>`.
    Tag(String),
}

/// What an atom asks of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Test {
    /// The value is one of these (an error when the key is absent).
    OneOf(Vec<String>),
    /// The key is present (`has()`; false when absent, an error when its parent is).
    Present,
}

/// A conjunct of a policy's `when` the index can decide: false means the `when` is false.
#[derive(Debug, Clone)]
pub(crate) struct Atom {
    pub(crate) key: Key,
    pub(crate) test: Test,
}

/// A fixed-length set of policy positions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    fn set(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut(i as usize / 64) {
            *w |= 1 << (i % 64);
        }
    }

    fn and(&mut self, other: &[u64]) {
        for (a, b) in self.0.iter_mut().zip(other) {
            *a &= *b;
        }
    }

    /// `self &= free | listed`, `listed` being the nonzero words of a set, ascending.
    fn and_either(&mut self, free: &[u64], listed: &[(u32, u64)]) {
        let mut listed = listed.iter().peekable();
        for (w, (a, f)) in self.0.iter_mut().zip(free).enumerate() {
            let mut allow = *f;
            if let Some((_, bits)) = listed.next_if(|(lw, _)| *lw as usize == w) {
                allow |= bits;
            }
            *a &= allow;
        }
    }

    fn and_not(&mut self, other: &[u64]) {
        for (a, b) in self.0.iter_mut().zip(other) {
            *a &= !*b;
        }
    }

    /// Makes this set a copy of `other`, in the room it has (no allocation once it has
    /// held a set as large).
    fn copy_from(&mut self, other: &Bits) {
        self.0.clear();
        self.0.extend_from_slice(&other.0);
    }

    /// How many members the set has.
    pub(crate) fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The positions in the set, ascending.
    pub(crate) fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let b = w.trailing_zeros();
                    w &= w - 1;
                    (wi * 64) as u32 + b
                })
            })
        })
    }
}

/// The atoms of one key within one kind.
#[derive(Debug)]
struct KeyIndex {
    key: Key,
    /// The kind's policies with no `OneOf` atom on this key (they pass whatever its value).
    free: Bits,
    /// Value → the policies whose `OneOf` atoms on this key all admit it, as the nonzero
    /// words of a set: (word index, bits), ascending.
    admits: Admits,
    /// The policies with a `Present` atom on this key.
    present: Bits,
}

/// Value → the policies it admits (nonzero words of a set), looked up with every event
/// value a kind's key has: open addressing over the values' [`Fx`] hashes, each slot holding
/// the whole 64-bit hash, compared before the value's bytes are touched, so that a value no
/// policy lists costs no byte comparison, and the bytes of one that matches are compared
/// inline (a call to `memcmp`, through a `HashMap`, was a quarter of the index's time).
#[derive(Debug, Default)]
struct Admits {
    /// `slots.len() - 1` (a power of two minus one).
    mask: usize,
    /// A value's hash and its index into `entries` plus one; `(_, 0)` for an empty slot (at
    /// least half are).
    slots: Vec<(u64, u32)>,
    entries: Vec<Admitted>,
}

/// A value and the policies it admits.
type Admitted = (Box<str>, Vec<(u32, u64)>);

impl Admits {
    fn new(values: impl Iterator<Item = (String, Vec<(u32, u64)>)>) -> Admits {
        let entries: Vec<Admitted> = values
            .map(|(v, words)| (v.into_boxed_str(), words))
            .collect();
        let size = (entries.len() * 2).next_power_of_two().max(2);
        let mask = size - 1;
        let mut slots = vec![(0u64, 0u32); size];
        for (n, (v, _)) in entries.iter().enumerate() {
            let h = fx(v.as_bytes());
            let mut i = (h as usize) & mask;
            while slots.get(i).is_some_and(|s| s.1 != 0) {
                i = (i + 1) & mask;
            }
            if let Some(slot) = slots.get_mut(i) {
                *slot = (h, u32::try_from(n + 1).unwrap_or(u32::MAX));
            }
        }
        Admits {
            mask,
            slots,
            entries,
        }
    }

    fn get(&self, v: &str) -> Option<&[(u32, u64)]> {
        let h = fx(v.as_bytes());
        let mut i = (h as usize) & self.mask;
        loop {
            let (sh, n) = *self.slots.get(i)?;
            let n = usize::try_from(n).ok()?.checked_sub(1)?;
            if sh == h {
                if let Some((ev, words)) = self.entries.get(n) {
                    if same_bytes(ev.as_bytes(), v.as_bytes()) {
                        return Some(words);
                    }
                }
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// `a == b`, eight bytes at a time, inline.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        let (mut wx, mut wy) = ([0u8; 8], [0u8; 8]);
        wx.copy_from_slice(x);
        wy.copy_from_slice(y);
        if wx != wy {
            return false;
        }
    }
    ca.remainder()
        .iter()
        .zip(cb.remainder())
        .all(|(x, y)| x == y)
}

/// The [`Fx`] hash of `bytes`.
fn fx(bytes: &[u8]) -> u64 {
    let mut h = Fx::default();
    h.write(bytes);
    h.finish()
}

/// The candidates for one event kind.
#[derive(Debug, Default)]
pub(crate) struct KindIndex {
    /// The policies whose `on` lists this kind.
    members: Bits,
    keys: Vec<KeyIndex>,
    /// Event paths the interpreter needs for this kind's fallback policies.
    pub(crate) reads: BTreeSet<Option<FieldId>>,
    /// Per policy position: the keys (bit `i` for `keys[i]`) an event must have a value
    /// under for the index to have proved every atom of the policy true, so that its
    /// residual (`Compiled::residual`) decides it; `None` when it has no residual, or keys
    /// past the 64th.
    residual_keys: Vec<Option<u64>>,
}

/// The keys under which an event has a value (bit `i` for a kind's `keys[i]`), as
/// [`KindIndex::candidates`] found them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Found64(u64);

/// What an event has under a key.
enum Found<'e> {
    Value(&'e str),
    /// A value that is not a string (an int, a time): present, so `has()` holds.
    Other,
    Absent,
    /// The parent object is absent: atoms can tell nothing.
    Unknown,
}

fn find<'e>(ev: &'e Event, key: &Key) -> Found<'e> {
    match key {
        Key::Field(f) => match fields::read(ev, *f) {
            Ok(Some(FieldValue::Str(v))) => Found::Value(v),
            Ok(Some(_)) => Found::Other,
            Ok(None) => Found::Absent,
            Err(_) => Found::Unknown,
        },
        Key::Tag(k) => match ev.resource.tags.get(k) {
            Some(v) => Found::Value(v),
            None => Found::Absent,
        },
    }
}

impl KindIndex {
    /// Builds the index of one kind over `n` policies; `policies` yields, for each policy on
    /// this kind, its position and atoms.
    pub(crate) fn build<'a>(
        n: usize,
        policies: impl Iterator<Item = (u32, &'a [Atom], BTreeSet<Option<FieldId>>, bool)>,
    ) -> KindIndex {
        let mut members = Bits::new(n);
        let mut reads = BTreeSet::new();
        // Key → per policy, the values its `OneOf` atoms admit (their intersection) and
        // whether it needs the key present.
        type PerPolicy = (Option<BTreeSet<String>>, bool);
        let mut by_key: Vec<(Key, HashMap<u32, PerPolicy>)> = Vec::new();
        let mut residual_keys: Vec<Option<u64>> = vec![None; n];
        for (i, atoms, r, has_residual) in policies {
            members.set(i);
            reads.extend(r);
            let mut needs = Some(0u64);
            for a in atoms {
                let pos = match by_key.iter().position(|(k, _)| *k == a.key) {
                    Some(pos) => pos,
                    None => {
                        by_key.push((a.key.clone(), HashMap::new()));
                        by_key.len() - 1
                    }
                };
                needs = needs.and_then(|m| (pos < 64).then(|| m | 1 << pos));
                let entry = by_key[pos].1.entry(i).or_insert((None, false));
                match &a.test {
                    Test::Present => entry.1 = true,
                    Test::OneOf(vs) => {
                        let vs: BTreeSet<String> = vs.iter().cloned().collect();
                        entry.0 = Some(match entry.0.take() {
                            None => vs,
                            Some(prev) => prev.intersection(&vs).cloned().collect(),
                        });
                    }
                }
            }
            if has_residual {
                if let Some(slot) = residual_keys.get_mut(i as usize) {
                    *slot = needs;
                }
            }
        }
        let mut keys = Vec::with_capacity(by_key.len());
        for (key, per) in by_key {
            let mut free = members.clone();
            let mut present = Bits::new(n);
            let mut lists: HashMap<String, Vec<u32>> = HashMap::new();
            let mut order: Vec<_> = per.into_iter().collect();
            order.sort_by_key(|(i, _)| *i);
            for (i, (values, needs)) in order {
                if needs {
                    present.set(i);
                }
                if let Some(values) = values {
                    if let Some(w) = free.0.get_mut(i as usize / 64) {
                        *w &= !(1 << (i % 64));
                    }
                    for v in values {
                        lists.entry(v).or_default().push(i);
                    }
                }
            }
            // Sparse sets (memory grows with the lists, not values × policies), read in the
            // same pass over the words as the free set.
            let admits = Admits::new(lists.into_iter().map(|(v, list)| {
                let mut words: Vec<(u32, u64)> = Vec::new();
                for i in list {
                    let (w, bit) = (i / 64, 1u64 << (i % 64));
                    match words.last_mut() {
                        Some((lw, bits)) if *lw == w => *bits |= bit,
                        _ => words.push((w, bit)),
                    }
                }
                (v, words)
            }));
            keys.push(KeyIndex {
                key,
                free,
                admits,
                present,
            });
        }
        KindIndex {
            members,
            keys,
            reads,
            residual_keys,
        }
    }

    /// Whether the candidate at `pos` may be decided by its residual: the event has a value
    /// under every key its atoms test, so the index proved each of them true.
    pub(crate) fn residual_decides(&self, pos: u32, found: Found64) -> bool {
        matches!(
            self.residual_keys.get(pos as usize),
            Some(Some(needs)) if needs & !found.0 == 0
        )
    }

    /// The policies that can match `ev`, in rank order.
    pub(crate) fn candidates(&self, ev: &Event, out: &mut Bits) -> Found64 {
        out.copy_from(&self.members);
        let mut found = 0u64;
        for (i, k) in self.keys.iter().enumerate() {
            let bit = if i < 64 { 1u64 << i } else { 0 };
            match find(ev, &k.key) {
                Found::Value(v) => {
                    found |= bit;
                    match k.admits.get(v) {
                        Some(listed) => out.and_either(&k.free.0, listed),
                        None => out.and(&k.free.0),
                    }
                }
                Found::Other => found |= bit,
                Found::Absent => out.and_not(&k.present.0),
                Found::Unknown => {}
            }
        }
        Found64(found)
    }

    /// Every policy of the kind (the unindexed path).
    pub(crate) fn members(&self, out: &mut Bits) {
        out.copy_from(&self.members);
    }
}

/// The rustc hasher (FxHash): the index's keys are the policy author's literals, looked up
/// (never inserted) with event values, so a hash-flooding defence buys nothing here, and
/// SipHash costs more than the rest of a lookup.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::Fx;
    use std::collections::HashSet;
    use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

    fn raw(bytes: &[u8]) -> u64 {
        let mut h = Fx::default();
        h.write(bytes);
        h.finish()
    }

    /// The index's lookups stay one probe only while distinct keys hash apart: every key that
    /// differs in the 16 low bits of one word, whether the word is a whole 8-byte chunk or the
    /// bytes after the last one, hashes differently.
    #[test]
    fn small_domains_hash_without_collisions() {
        let mut tail = HashSet::new();
        let mut chunk = HashSet::new();
        for v in 0..=u16::MAX {
            let [a, b] = v.to_le_bytes();
            assert!(tail.insert(raw(&[a, b])), "two-byte key {v:#06x} collided");
            let mut key = *b"Redeploy\0\0\0\0\0\0\0\0";
            key[8] = a;
            key[9] = b;
            assert!(chunk.insert(raw(&key)), "16-byte key {v:#06x} collided");
        }
    }

    /// `str`'s `Hash` ends every string with a 0xff byte (`write_u8`), so a pair of strings
    /// split at different places hashes differently: the hasher must feed that byte in.
    #[test]
    fn strings_are_prefix_free() {
        let build = BuildHasherDefault::<Fx>::default();
        assert_ne!(build.hash_one(("ab", "c")), build.hash_one(("a", "bc")));
        let mut h = Fx::default();
        "Reboot".hash(&mut h);
        assert_ne!(
            h.finish(),
            raw(b"Reboot"),
            "the terminator is part of the hash"
        );
    }
}

#[cfg(test)]
mod admits_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::{same_bytes, Admits};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Values that share prefixes, differ only at an eight-byte chunk's edge, or are empty.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-c]{0,20}",
            "eastus2?",
            "(Microsoft\\.Compute/virtualMachines/)?[a-b]{7,9}",
            "\\PC{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The table answers exactly what a map of the same values answers.
        #[test]
        fn admits_finds_exactly_the_values_it_holds(
            held in proptest::collection::btree_set(value(), 0..40),
            probes in proptest::collection::vec(value(), 0..40),
        ) {
            let map: BTreeMap<String, Vec<(u32, u64)>> = held
                .iter()
                .enumerate()
                .map(|(i, v)| (v.clone(), vec![(i as u32, 1u64 << (i % 64))]))
                .collect();
            let admits = Admits::new(map.clone().into_iter());
            for v in held.iter().chain(&probes) {
                prop_assert_eq!(admits.get(v), map.get(v).map(Vec::as_slice), "{:?}", v);
            }
        }

        #[test]
        fn same_bytes_is_equality(a in value(), b in value()) {
            prop_assert_eq!(same_bytes(a.as_bytes(), b.as_bytes()), a == b);
            prop_assert!(same_bytes(a.as_bytes(), a.as_bytes()));
        }
    }

    #[test]
    fn an_empty_table_finds_nothing() {
        let admits = Admits::new(std::iter::empty());
        assert_eq!(admits.get(""), None);
        assert_eq!(admits.get("eastus"), None);
    }
}
