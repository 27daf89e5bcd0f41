//! Groups: members from any provider, changed by the group's admins.
//!
//! The system of record is the stream `INTEROP_GROUPS` (docs/adr/0028): one
//! `StoredGroup` per group (subject `interop.v1.groups.<group key>`), written
//! compare-and-set (`Nats-Expected-Last-Subject-Sequence`), so the size
//! limit and the admin check hold under concurrent changes from several
//! ingest replicas. A group whose last member left is kept as a tombstone.
//!
//! Redis caches each group in one hash, `interop:group:<id>`: field `~rev`
//! (the record's stream sequence), `~name` (absent: no name), `~deleted`
//! (a tombstone), and one field per member, `a` (admin) or `m`. One key, so
//! an eviction takes all of it or nothing; a hash without `~rev` is a miss
//! and the reader loads the record. A cache write never replaces a later
//! sequence with an earlier one.
//!
//! Lifetime: the record ages out [`GROUP_TTL_SECS`] after it was last
//! written; a send re-writes it at most once a day ([`TOUCH_EVERY_SECS`]),
//! so an active group never ages out and one nobody uses goes away. The
//! cache expires with it.
//!
//! Groups written by an earlier version (Redis sets
//! `interop:group:<id>:members`, `:admins`, `:name`, and the per-user index
//! `interop:groups:<address>`) are moved into the stream when first read
//! and by [`crate::Records::migrate`].

use std::collections::BTreeSet;
use std::sync::LazyLock;

use interop_bus::subjects::group_record;
use interop_proto::v1::StoredGroup;
use interop_proto::Message as _;

use crate::records::unavailable;
use crate::{keys, Records, StateError};

/// A group expires this long after the last change or send (400 days, as
/// contact records).
pub const GROUP_TTL_SECS: u64 = 400 * 24 * 3600;

/// A send refreshes the group's lifetime when less than
/// `GROUP_TTL_SECS - TOUCH_EVERY_SECS` is left: at most once a day.
pub const TOUCH_EVERY_SECS: u64 = 24 * 3600;

/// A group as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    /// Empty: no name.
    pub name: String,
    /// Sorted.
    pub admins: Vec<String>,
    /// Sorted.
    pub members: Vec<String>,
}

/// A change made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// The group after it; `None` when it was emptied (and deleted).
    pub group: Option<Group>,
    /// The members it removed (of those it named, the ones who were
    /// members), in the order named.
    pub removed: Vec<String>,
}

/// Why a change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeRefused {
    /// No such group.
    NotFound,
    /// The actor is not an admin.
    NotAdmin,
    /// The group would have more than the limit.
    Full,
    /// A new admin would not be a member.
    AdminNotMember,
}

/// A change to a group's membership or name.
#[derive(Debug, Clone, Default)]
pub struct Change<'a> {
    pub actor: &'a str,
    pub add: &'a [String],
    pub remove: &'a [String],
    pub add_admins: &'a [String],
    /// `Some`: the new name (empty: none); `None`: unchanged.
    pub name: Option<&'a str>,
}

/// The cache hash's bookkeeping fields (no address starts with `~`).
const REV: &str = "~rev";
const NAME: &str = "~name";
const DELETED: &str = "~deleted";

/// Applies `change` to `group`: the rules the stream's compare-and-set
/// makes atomic. `check_admin` false: whoever asks (an erasure).
pub fn apply(
    group: &Group,
    change: &Change<'_>,
    max_members: usize,
    check_admin: bool,
) -> Result<Changed, ChangeRefused> {
    if check_admin && !group.admins.iter().any(|a| a == change.actor) {
        return Err(ChangeRefused::NotAdmin);
    }
    let mut members: BTreeSet<&str> = group.members.iter().map(String::as_str).collect();
    let mut admins: BTreeSet<&str> = group.admins.iter().map(String::as_str).collect();
    let mut removed = Vec::new();
    for m in change.remove {
        if members.remove(m.as_str()) {
            admins.remove(m.as_str());
            removed.push(m.clone());
        }
    }
    members.extend(change.add.iter().map(String::as_str));
    if members.len() > max_members {
        return Err(ChangeRefused::Full);
    }
    for a in change.add_admins {
        if !members.contains(a.as_str()) {
            return Err(ChangeRefused::AdminNotMember);
        }
        admins.insert(a);
    }
    if members.is_empty() {
        return Ok(Changed {
            group: None,
            removed,
        });
    }
    Ok(Changed {
        group: Some(Group {
            id: group.id.clone(),
            name: change.name.unwrap_or(&group.name).to_owned(),
            admins: admins.into_iter().map(str::to_owned).collect(),
            members: members.into_iter().map(str::to_owned).collect(),
        }),
        removed,
    })
}

/// A send's membership check: 1 if `ARGV[1]` is a member, 0 if not (or the
/// group is gone), -1 if the group is not cached (the caller loads it), 2
/// if a member and the group's lifetime is due for a refresh (less than
/// `ARGV[2]` seconds left: the caller re-writes the record).
const MEMBER_CHECK: &str = "
if redis.call('HEXISTS', KEYS[1], '~rev') == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], '~deleted') == 1 then return 0 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('TTL', KEYS[1]) > tonumber(ARGV[2]) then return 1 end
return 2
";

/// Caches a group record unless the cache holds a later one. KEYS[1] the
/// hash; ARGV: sequence, TTL, deleted (`1`/`0`), name, then pairs
/// (address, role).
static CACHE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CACHE_LUA));
const CACHE_LUA: &str = "
local cur = redis.call('HGET', KEYS[1], '~rev')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '~rev', ARGV[1])
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], '~deleted', '1') end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], '~name', ARGV[4]) end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Adds the membership check of a group send to a pipeline (one integer
/// answer, see [`MemberCheck::from_reply`]). Plain `EVAL`: no script cache
/// to lose on a Redis restart.
pub fn add_member_check(pipe: &mut redis::Pipeline, group_id: &str, sender: &str) {
    pipe.cmd("EVAL")
        .arg(MEMBER_CHECK)
        .arg(1)
        .arg(keys::group(group_id))
        .arg(sender)
        .arg(GROUP_TTL_SECS - TOUCH_EVERY_SECS);
}

/// What a send's membership check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberCheck {
    Member,
    NotMember,
    /// The group is not cached: ask [`GroupStore::is_member`].
    NotCached,
    /// A member, and the group's lifetime is due for a refresh
    /// ([`GroupStore::touch`]).
    MemberTouchDue,
}

impl MemberCheck {
    pub fn from_reply(r: i64) -> Self {
        match r {
            1 => Self::Member,
            2 => Self::MemberTouchDue,
            -1 => Self::NotCached,
            _ => Self::NotMember,
        }
    }
}

fn group_of(stored: &StoredGroup) -> Option<Group> {
    (!stored.deleted && !stored.members.is_empty()).then(|| Group {
        id: stored.id.clone(),
        name: stored.name.clone(),
        admins: stored.admins.clone(),
        members: stored.members.clone(),
    })
}

fn stored_of(id: &str, group: Option<&Group>) -> StoredGroup {
    let mut s = StoredGroup {
        id: id.to_owned(),
        deleted: group.is_none(),
        updated_at_ms: interop_proto::now_ms(),
        ..Default::default()
    };
    if let Some(g) = group {
        s.name.clone_from(&g.name);
        s.admins.clone_from(&g.admins);
        s.members.clone_from(&g.members);
    }
    s
}

/// The cache write of one group's record.
fn cache_call(stored: &StoredGroup, seq: u64) -> redis::ScriptInvocation<'static> {
    let mut call = CACHE.key(keys::group(&stored.id));
    call.arg(seq)
        .arg(GROUP_TTL_SECS)
        .arg(if stored.deleted { "1" } else { "0" })
        .arg(&stored.name);
    for m in &stored.members {
        let role = if stored.admins.contains(m) { "a" } else { "m" };
        call.arg(m).arg(role);
    }
    call
}

/// Reads and changes groups.
#[derive(Clone)]
pub struct GroupStore {
    records: Records,
}

impl GroupStore {
    pub fn new(records: Records) -> Self {
        Self { records }
    }

    fn subject(group_id: &str) -> String {
        group_record(&interop_bus::recipient_key(group_id))
    }

    /// The record in the stream and its sequence (0: none).
    async fn load(&self, group_id: &str) -> Result<(Option<StoredGroup>, u64), StateError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self
            .records
            .groups
            .direct_get_last_for_subject(Self::subject(group_id))
            .await
        {
            Ok(m) => {
                let stored = StoredGroup::decode(m.payload)
                    .map_err(|e| unavailable("decoding a group", e))?;
                Ok((Some(stored), m.sequence))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok((None, 0)),
            Err(e) => Err(unavailable("reading a group", e)),
        }
    }

    async fn cache(&self, stored: &StoredGroup, seq: u64) -> Result<(), StateError> {
        let mut conn = self.records.redis().clone();
        let _: i64 = cache_call(stored, seq).invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Writes `group` (`None`: a tombstone) if the record's last sequence
    /// is still `expected`, then caches it; `Ok(false)` if another writer
    /// came first.
    async fn store(
        &self,
        id: &str,
        group: Option<&Group>,
        expected: u64,
    ) -> Result<bool, StateError> {
        let stored = stored_of(id, group);
        let Some(seq) = self
            .records
            .publish(Self::subject(id), stored.encode_to_vec(), Some(expected))
            .await?
        else {
            return Ok(false);
        };
        self.cache(&stored, seq).await?;
        Ok(true)
    }

    /// The record from the stream, cached (a miss). A group only an
    /// earlier version stored (in Redis sets) is moved into the stream.
    async fn load_and_cache(&self, group_id: &str) -> Result<Option<Group>, StateError> {
        loop {
            let (stored, seq) = self.load(group_id).await?;
            if let Some(stored) = stored {
                self.cache(&stored, seq).await?;
                return Ok(group_of(&stored));
            }
            let Some(legacy) = self.legacy(group_id).await? else {
                return Ok(None);
            };
            if self.store(group_id, Some(&legacy), 0).await? {
                self.drop_legacy(group_id, &legacy.members).await?;
                return Ok(Some(legacy));
            }
        }
    }

    /// A group as an earlier version kept it in Redis, if any.
    async fn legacy(&self, group_id: &str) -> Result<Option<Group>, StateError> {
        let mut conn = self.records.redis().clone();
        let (mut members, mut admins, name): (Vec<String>, Vec<String>, Option<String>) =
            redis::pipe()
                .cmd("SMEMBERS")
                .arg(keys::legacy_group_members(group_id))
                .cmd("SMEMBERS")
                .arg(keys::legacy_group_admins(group_id))
                .cmd("GET")
                .arg(keys::legacy_group_name(group_id))
                .query_async(&mut conn)
                .await?;
        if members.is_empty() {
            return Ok(None);
        }
        members.sort();
        admins.sort();
        Ok(Some(Group {
            id: group_id.to_owned(),
            name: name.unwrap_or_default(),
            admins,
            members,
        }))
    }

    async fn drop_legacy(&self, group_id: &str, members: &[String]) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(keys::legacy_group_members(group_id))
            .arg(keys::legacy_group_admins(group_id))
            .arg(keys::legacy_group_name(group_id))
            .ignore();
        for m in members {
            pipe.cmd("SREM")
                .arg(keys::legacy_user_groups(m))
                .arg(group_id)
                .ignore();
        }
        let mut conn = self.records.redis().clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// Moves every group an earlier version kept in Redis into the stream
    /// (part of [`Records::migrate`]). Returns how many.
    pub(crate) async fn migrate(&self) -> Result<u64, StateError> {
        let suffix = ":members";
        let pattern = format!("{}*{suffix}", keys::LEGACY_GROUP_PREFIX);
        let mut moved = 0;
        for key in crate::erase::scan(self.records.redis(), &pattern).await? {
            let Some(id) = key
                .strip_prefix(keys::LEGACY_GROUP_PREFIX)
                .and_then(|k| k.strip_suffix(suffix))
            else {
                continue;
            };
            self.load_and_cache(id).await?;
            moved += 1;
        }
        let mut conn = self.records.redis().clone();
        for chunk in crate::erase::scan(
            self.records.redis(),
            &format!("{}*", keys::LEGACY_USER_GROUPS_PREFIX),
        )
        .await?
        .chunks(500)
        {
            let _: i64 = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await?;
        }
        Ok(moved)
    }

    /// Stores a new group: `creator` is its admin and a member, with
    /// `members` (the caller checked the size and the name, and made the
    /// id); `name` empty: no name.
    pub async fn create(
        &self,
        group_id: &str,
        creator: &str,
        members: &[String],
        name: &str,
    ) -> Result<Group, StateError> {
        let mut all: BTreeSet<String> = members.iter().cloned().collect();
        all.insert(creator.to_owned());
        let group = Group {
            id: group_id.to_owned(),
            name: name.to_owned(),
            admins: vec![creator.to_owned()],
            members: all.into_iter().collect(),
        };
        if !self.store(group_id, Some(&group), 0).await? {
            // Ids are fresh UUIDs: only a retry of this very creation
            // finds one.
            return Ok(self.get(group_id).await?.unwrap_or(group));
        }
        Ok(group)
    }

    /// The group, or `None` if it does not exist.
    pub async fn get(&self, group_id: &str) -> Result<Option<Group>, StateError> {
        let mut conn = self.records.redis().clone();
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys::group(group_id))
            .query_async(&mut conn)
            .await?;
        if !fields.iter().any(|(f, _)| f == REV) {
            return self.load_and_cache(group_id).await;
        }
        let mut group = Group {
            id: group_id.to_owned(),
            ..Default::default()
        };
        for (f, v) in fields {
            match f.as_str() {
                DELETED => return Ok(None),
                NAME => group.name = v,
                REV => {}
                _ => {
                    if v == "a" {
                        group.admins.push(f.clone());
                    }
                    group.members.push(f);
                }
            }
        }
        if group.members.is_empty() {
            return Ok(None);
        }
        group.members.sort();
        group.admins.sort();
        Ok(Some(group))
    }

    /// The members of a group (empty if it does not exist).
    pub async fn members(&self, group_id: &str) -> Result<Vec<String>, StateError> {
        Ok(self
            .get(group_id)
            .await?
            .map(|g| g.members)
            .unwrap_or_default())
    }

    /// Whether `address` is a member (for a send whose pipeline found the
    /// group not cached).
    pub async fn is_member(&self, group_id: &str, address: &str) -> Result<bool, StateError> {
        Ok(self
            .get(group_id)
            .await?
            .is_some_and(|g| g.members.iter().any(|m| m == address)))
    }

    /// Re-writes the group's record unchanged, so it does not age out (a
    /// send found it due). Another writer coming first refreshed it too.
    pub async fn touch(&self, group_id: &str) -> Result<(), StateError> {
        let (stored, seq) = self.load(group_id).await?;
        if let Some(group) = stored.as_ref().and_then(group_of) {
            self.store(group_id, Some(&group), seq).await?;
        }
        Ok(())
    }

    /// Applies `change` atomically if the actor is an admin and the group
    /// stays within `max_members`.
    pub async fn change(
        &self,
        group_id: &str,
        change: &Change<'_>,
        max_members: usize,
    ) -> Result<Result<Changed, ChangeRefused>, StateError> {
        self.change_as(group_id, change, max_members, true).await
    }

    async fn change_as(
        &self,
        group_id: &str,
        change: &Change<'_>,
        max_members: usize,
        check_admin: bool,
    ) -> Result<Result<Changed, ChangeRefused>, StateError> {
        loop {
            let (stored, seq) = self.load(group_id).await?;
            let group = match stored.as_ref().and_then(group_of) {
                Some(g) => g,
                None if stored.is_none() => match self.load_and_cache(group_id).await? {
                    // Moved in from an earlier version's sets: read again.
                    Some(_) => continue,
                    None => return Ok(Err(ChangeRefused::NotFound)),
                },
                None => return Ok(Err(ChangeRefused::NotFound)),
            };
            let changed = match apply(&group, change, max_members, check_admin) {
                Ok(c) => c,
                Err(refused) => return Ok(Err(refused)),
            };
            if self.store(group_id, changed.group.as_ref(), seq).await? {
                return Ok(Ok(changed));
            }
        }
    }

    /// Every group's record in the stream, with its sequence.
    async fn all(&self) -> Result<Vec<(StoredGroup, u64)>, StateError> {
        let mut raw = Vec::new();
        self.records
            .read_last_per_subject(
                &self.records.groups,
                interop_bus::subjects::GROUPS_ALL.to_owned(),
                |payload, seq| raw.push((payload, seq)),
            )
            .await?;
        raw.into_iter()
            .map(|(payload, seq)| {
                StoredGroup::decode(payload)
                    .map(|g| (g, seq))
                    .map_err(|e| unavailable("decoding a group", e))
            })
            .collect()
    }

    /// The groups `address` is a member of, sorted: a pass over every
    /// group's record (erasure; docs/adr/0013 scans the same way).
    pub async fn groups_of(&self, address: &str) -> Result<Vec<String>, StateError> {
        let mut ids: Vec<String> = self
            .all()
            .await?
            .into_iter()
            .filter(|(g, _)| !g.deleted && g.members.iter().any(|m| m == address))
            .map(|(g, _)| g.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Caches every group's record (`Records::warm`). Returns how many.
    pub(crate) async fn warm(&self) -> Result<u64, StateError> {
        let all = self.all().await?;
        let mut conn = self.records.redis().clone();
        CACHE.load_async(&mut conn).await?;
        for chunk in all.chunks(200) {
            let calls: Vec<redis::ScriptInvocation<'_>> = chunk
                .iter()
                .map(|(stored, seq)| cache_call(stored, *seq))
                .collect();
            let mut pipe = redis::pipe();
            for call in &calls {
                pipe.invoke_script(call).ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        Ok(all.len() as u64)
    }

    /// Deletes a group whatever its members (a group whose creation could
    /// not be told to its members): a tombstone in the stream and the
    /// cache.
    pub async fn delete(&self, group_id: &str) -> Result<(), StateError> {
        loop {
            let (stored, seq) = self.load(group_id).await?;
            if stored.as_ref().is_some_and(|s| s.deleted) {
                return Ok(());
            }
            if self.store(group_id, None, seq).await? {
                return Ok(());
            }
        }
    }

    /// Removes `address` from the group, whoever they are (erasure): from
    /// the members and the admins. A group left without members is
    /// deleted; one left without admins keeps its members (nobody can
    /// change it any more; they can still write to it). Returns whether
    /// they were a member.
    pub async fn remove_member(&self, group_id: &str, address: &str) -> Result<bool, StateError> {
        let remove = [address.to_owned()];
        let change = Change {
            remove: &remove,
            ..Default::default()
        };
        Ok(self
            .change_as(group_id, &change, usize::MAX, false)
            .await?
            .is_ok_and(|c| !c.removed.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(admins: &[&str], members: &[&str]) -> Group {
        Group {
            id: "g".into(),
            name: "n".into(),
            admins: admins.iter().map(|s| (*s).to_owned()).collect(),
            members: members.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_admins_change_and_limits_hold_at_their_edge() {
        let g = group(&["a"], &["a", "b"]);
        let add = strings(&["c"]);
        let change = Change {
            actor: "b",
            add: &add,
            ..Default::default()
        };
        assert_eq!(apply(&g, &change, 3, true), Err(ChangeRefused::NotAdmin));
        let change = Change {
            actor: "a",
            ..change
        };
        assert_eq!(
            apply(&g, &change, 3, true).unwrap().group.unwrap().members,
            ["a", "b", "c"],
            "exactly at the limit"
        );
        assert_eq!(apply(&g, &change, 2, true), Err(ChangeRefused::Full));
        // Removing makes room in the same change.
        let remove = strings(&["b"]);
        let swap = Change {
            remove: &remove,
            ..change.clone()
        };
        let out = apply(&g, &swap, 2, true).unwrap();
        assert_eq!(out.group.unwrap().members, ["a", "c"]);
        assert_eq!(out.removed, ["b"]);
        // A new admin must be a member after the change.
        let admins = strings(&["z"]);
        let bad = Change {
            actor: "a",
            add_admins: &admins,
            ..Default::default()
        };
        assert_eq!(apply(&g, &bad, 9, true), Err(ChangeRefused::AdminNotMember));
    }

    #[test]
    fn a_group_emptied_is_gone_and_erasure_needs_no_admin() {
        let g = group(&["a"], &["a", "b"]);
        let remove = strings(&["a", "b", "nobody"]);
        let change = Change {
            actor: "",
            remove: &remove,
            ..Default::default()
        };
        let out = apply(&g, &change, usize::MAX, false).unwrap();
        assert_eq!(out.group, None);
        assert_eq!(out.removed, ["a", "b"]);
    }

    #[test]
    fn a_rename_sets_or_clears_the_name() {
        let g = group(&["a"], &["a"]);
        let rename = |name| Change {
            actor: "a",
            name: Some(name),
            ..Default::default()
        };
        assert_eq!(
            apply(&g, &rename("x"), 9, true)
                .unwrap()
                .group
                .unwrap()
                .name,
            "x"
        );
        assert_eq!(
            apply(&g, &rename(""), 9, true).unwrap().group.unwrap().name,
            ""
        );
    }
}
