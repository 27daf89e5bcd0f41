//! Groups: members from any provider, changed by the group's admins.
//!
//! Keys: `interop:group:<id>:members` and `interop:group:<id>:admins`, two
//! sets of addresses, `interop:group:<id>:name` (a string, absent when the
//! group has no name), and per member `interop:groups:<address>`, the set of
//! group ids the user is in (so erasing a user finds their groups). A group
//! with no member left is deleted. Changes run as one Lua script, so the
//! size limit and the admin check hold under concurrent changes from several
//! ingest replicas.
//!
//! Lifetime: all of them expire [`GROUP_TTL_SECS`] after the group was last
//! changed or written to. A send refreshes them at most once a day
//! ([`TOUCH_EVERY_SECS`]), so an active group never expires and one nobody
//! uses goes away with its members' indexes.
//!
//! The scripts touch members' index keys they compute from `ARGV` (the
//! prefix [`keys::USER_GROUPS_PREFIX`]); that is fine on a single Redis (the
//! gateway does not use Redis Cluster).

use redis::aio::ConnectionManager;

use crate::{keys, StateError};

/// A group and its members' indexes expire this long after the last change
/// or send (400 days, as contact records).
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

const CHANGE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {1, {}} end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {2, {}} end
local max = tonumber(ARGV[2])
local na, nr, nd = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local add, rem, adm = {}, {}, {}
local i = 6
for _ = 1, na do add[#add + 1] = ARGV[i]; i = i + 1 end
for _ = 1, nr do rem[#rem + 1] = ARGV[i]; i = i + 1 end
for _ = 1, nd do adm[#adm + 1] = ARGV[i]; i = i + 1 end
local size = redis.call('SCARD', KEYS[1])
local removing, adding, gone = {}, {}, {}
for _, m in ipairs(rem) do
  if not removing[m] and redis.call('SISMEMBER', KEYS[1], m) == 1 then
    removing[m] = true; size = size - 1; gone[#gone + 1] = m
  end
end
for _, m in ipairs(add) do
  if not adding[m] and (removing[m] or redis.call('SISMEMBER', KEYS[1], m) == 0) then adding[m] = true; size = size + 1 end
end
if size > max then return {3, {}} end
for _, m in ipairs(adm) do
  if not (adding[m] or (redis.call('SISMEMBER', KEYS[1], m) == 1 and not removing[m])) then return {4, {}} end
end
local prefix, group, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2]
for _, m in ipairs(rem) do
  redis.call('SREM', KEYS[1], m); redis.call('SREM', KEYS[2], m)
  redis.call('SREM', prefix .. m, group)
end
for _, m in ipairs(add) do redis.call('SADD', KEYS[1], m) end
for _, m in ipairs(adm) do redis.call('SADD', KEYS[2], m) end
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]); return {0, gone} end
if ARGV[i + 3] == '1' then
  if ARGV[i + 4] == '' then redis.call('DEL', KEYS[3]) else redis.call('SET', KEYS[3], ARGV[i + 4]) end
end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('SADD', prefix .. m, group)
  redis.call('EXPIRE', prefix .. m, ttl)
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
return {0, gone}
";

/// A send's membership check: 1 if `ARGV[1]` is a member of the group, and
/// then the group's and its members' lifetime is refreshed if that is due
/// (less than `ARGV[5]` seconds left, or none set).
const MEMBER_AND_TOUCH: &str = "
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
local prefix, group, ttl = ARGV[2], ARGV[3], ARGV[4]
local left = redis.call('TTL', KEYS[1])
if left >= 0 and left > tonumber(ARGV[5]) then return 1 end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('SADD', prefix .. m, group)
  redis.call('EXPIRE', prefix .. m, ttl)
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
return 1
";

/// Removes `ARGV[1]` from the group (members, admins, its index entry);
/// deletes the group when no member is left. Returns 1 if it was a member.
const REMOVE_MEMBER: &str = "
local was = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', ARGV[2] .. ARGV[1], ARGV[3])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) end
return was
";

/// Deletes a group: every member's index entry, then its keys.
const DELETE: &str = "
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('SREM', ARGV[1] .. m, ARGV[2])
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
";

/// Adds the membership check of a group send to a pipeline (one integer
/// answer: 1 member, 0 not), refreshing the group's lifetime at most once a
/// day. Plain `EVAL`: no script cache to lose on a Redis restart.
pub fn add_member_check(pipe: &mut redis::Pipeline, group_id: &str, sender: &str) {
    pipe.cmd("EVAL")
        .arg(MEMBER_AND_TOUCH)
        .arg(3)
        .arg(keys::group_members(group_id))
        .arg(keys::group_admins(group_id))
        .arg(keys::group_name(group_id))
        .arg(sender)
        .arg(keys::USER_GROUPS_PREFIX)
        .arg(group_id)
        .arg(GROUP_TTL_SECS)
        .arg(GROUP_TTL_SECS - TOUCH_EVERY_SECS);
}

/// Reads and changes groups.
#[derive(Clone)]
pub struct GroupStore {
    redis: ConnectionManager,
}

impl GroupStore {
    pub fn new(redis: ConnectionManager) -> Self {
        Self { redis }
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
        let mut conn = self.redis.clone();
        let mut all: Vec<&str> = members.iter().map(String::as_str).collect();
        all.push(creator);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SADD")
            .arg(keys::group_members(group_id))
            .arg(&all)
            .ignore()
            .cmd("SADD")
            .arg(keys::group_admins(group_id))
            .arg(creator)
            .ignore()
            .expire(keys::group_members(group_id), ttl())
            .ignore()
            .expire(keys::group_admins(group_id), ttl())
            .ignore();
        if !name.is_empty() {
            pipe.cmd("SET")
                .arg(keys::group_name(group_id))
                .arg(name)
                .arg("EX")
                .arg(GROUP_TTL_SECS)
                .ignore();
        }
        for m in &all {
            pipe.sadd(keys::user_groups(m), group_id)
                .ignore()
                .expire(keys::user_groups(m), ttl())
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(self.get(group_id).await?.unwrap_or_default())
    }

    /// The group, or `None` if it does not exist.
    pub async fn get(&self, group_id: &str) -> Result<Option<Group>, StateError> {
        let mut conn = self.redis.clone();
        let (mut members, mut admins, name): (Vec<String>, Vec<String>, Option<String>) =
            redis::pipe()
                .cmd("SMEMBERS")
                .arg(keys::group_members(group_id))
                .cmd("SMEMBERS")
                .arg(keys::group_admins(group_id))
                .cmd("GET")
                .arg(keys::group_name(group_id))
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

    /// The members of a group (empty if it does not exist).
    pub async fn members(&self, group_id: &str) -> Result<Vec<String>, StateError> {
        let mut conn = self.redis.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::group_members(group_id))
            .query_async(&mut conn)
            .await?;
        Ok(members)
    }

    /// Applies `change` atomically if the actor is an admin and the group
    /// stays within `max_members`.
    pub async fn change(
        &self,
        group_id: &str,
        change: &Change<'_>,
        max_members: usize,
    ) -> Result<Result<Changed, ChangeRefused>, StateError> {
        let mut conn = self.redis.clone();
        let script = redis::Script::new(CHANGE);
        let mut invocation = script.key(keys::group_members(group_id));
        invocation
            .key(keys::group_admins(group_id))
            .key(keys::group_name(group_id))
            .arg(change.actor)
            .arg(max_members)
            .arg(change.add.len())
            .arg(change.remove.len())
            .arg(change.add_admins.len())
            .arg(change.add)
            .arg(change.remove)
            .arg(change.add_admins)
            .arg(keys::USER_GROUPS_PREFIX)
            .arg(group_id)
            .arg(GROUP_TTL_SECS)
            .arg(if change.name.is_some() { "1" } else { "0" })
            .arg(change.name.unwrap_or(""));
        let (code, removed): (i64, Vec<String>) = invocation.invoke_async(&mut conn).await?;
        Ok(match code {
            0 => Ok(Changed {
                group: self.get(group_id).await?,
                removed,
            }),
            1 => Err(ChangeRefused::NotFound),
            2 => Err(ChangeRefused::NotAdmin),
            3 => Err(ChangeRefused::Full),
            _ => Err(ChangeRefused::AdminNotMember),
        })
    }

    /// The groups `address` is a member of (from its index).
    pub async fn groups_of(&self, address: &str) -> Result<Vec<String>, StateError> {
        let mut conn = self.redis.clone();
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::user_groups(address))
            .query_async(&mut conn)
            .await?;
        ids.sort();
        Ok(ids)
    }

    /// Deletes a group whatever its members (a group whose creation could
    /// not be told to its members): its sets, its name, and its id from
    /// every member's index.
    pub async fn delete(&self, group_id: &str) -> Result<(), StateError> {
        let mut conn = self.redis.clone();
        let () = redis::Script::new(DELETE)
            .key(keys::group_members(group_id))
            .key(keys::group_admins(group_id))
            .key(keys::group_name(group_id))
            .arg(keys::USER_GROUPS_PREFIX)
            .arg(group_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes `address` from the group, whoever they are (erasure): from
    /// the members, the admins and their index. A group left without members
    /// is deleted; one left without admins keeps its members (nobody can
    /// change it any more; they can still write to it). Returns whether
    /// they were a member.
    pub async fn remove_member(&self, group_id: &str, address: &str) -> Result<bool, StateError> {
        let mut conn = self.redis.clone();
        let was: i64 = redis::Script::new(REMOVE_MEMBER)
            .key(keys::group_members(group_id))
            .key(keys::group_admins(group_id))
            .key(keys::group_name(group_id))
            .arg(address)
            .arg(keys::USER_GROUPS_PREFIX)
            .arg(group_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(was == 1)
    }
}

fn ttl() -> i64 {
    i64::try_from(GROUP_TTL_SECS).unwrap_or(i64::MAX)
}
