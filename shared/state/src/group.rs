//! Groups: members from any provider, changed by the group's admins.
//!
//! Keys: `interop:group:<id>:members` and `interop:group:<id>:admins`, two
//! sets of addresses. A group with no member left is deleted. Changes run as
//! one Lua script, so the size limit and the admin check hold under
//! concurrent changes from several ingest replicas.

use redis::aio::ConnectionManager;

use crate::StateError;

/// The members set of a group.
pub fn members_key(group_id: &str) -> String {
    format!("interop:group:{group_id}:members")
}

/// The admins set of a group.
pub fn admins_key(group_id: &str) -> String {
    format!("interop:group:{group_id}:admins")
}

/// A group as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    /// Sorted.
    pub admins: Vec<String>,
    /// Sorted.
    pub members: Vec<String>,
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

/// A change to a group's membership.
#[derive(Debug, Clone, Default)]
pub struct Change<'a> {
    pub actor: &'a str,
    pub add: &'a [String],
    pub remove: &'a [String],
    pub add_admins: &'a [String],
}

const CHANGE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 2 end
local max = tonumber(ARGV[2])
local na, nr, nd = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local add, rem, adm = {}, {}, {}
local i = 6
for _ = 1, na do add[#add + 1] = ARGV[i]; i = i + 1 end
for _ = 1, nr do rem[#rem + 1] = ARGV[i]; i = i + 1 end
for _ = 1, nd do adm[#adm + 1] = ARGV[i]; i = i + 1 end
local size = redis.call('SCARD', KEYS[1])
local removing, adding = {}, {}
for _, m in ipairs(rem) do
  if not removing[m] and redis.call('SISMEMBER', KEYS[1], m) == 1 then removing[m] = true; size = size - 1 end
end
for _, m in ipairs(add) do
  if not adding[m] and (removing[m] or redis.call('SISMEMBER', KEYS[1], m) == 0) then adding[m] = true; size = size + 1 end
end
if size > max then return 3 end
for _, m in ipairs(adm) do
  if not (adding[m] or (redis.call('SISMEMBER', KEYS[1], m) == 1 and not removing[m])) then return 4 end
end
for _, m in ipairs(rem) do redis.call('SREM', KEYS[1], m); redis.call('SREM', KEYS[2], m) end
for _, m in ipairs(add) do redis.call('SADD', KEYS[1], m) end
for _, m in ipairs(adm) do redis.call('SADD', KEYS[2], m) end
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
";

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
    /// `members` (the caller checked the size and made the id).
    pub async fn create(
        &self,
        group_id: &str,
        creator: &str,
        members: &[String],
    ) -> Result<Group, StateError> {
        let mut conn = self.redis.clone();
        let mut all: Vec<&str> = members.iter().map(String::as_str).collect();
        all.push(creator);
        let _: () = redis::pipe()
            .atomic()
            .cmd("SADD")
            .arg(members_key(group_id))
            .arg(&all)
            .ignore()
            .cmd("SADD")
            .arg(admins_key(group_id))
            .arg(creator)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(self.get(group_id).await?.unwrap_or_default())
    }

    /// The group, or `None` if it does not exist.
    pub async fn get(&self, group_id: &str) -> Result<Option<Group>, StateError> {
        let mut conn = self.redis.clone();
        let (mut members, mut admins): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(members_key(group_id))
            .cmd("SMEMBERS")
            .arg(admins_key(group_id))
            .query_async(&mut conn)
            .await?;
        if members.is_empty() {
            return Ok(None);
        }
        members.sort();
        admins.sort();
        Ok(Some(Group {
            id: group_id.to_owned(),
            admins,
            members,
        }))
    }

    /// The members of a group (empty if it does not exist).
    pub async fn members(&self, group_id: &str) -> Result<Vec<String>, StateError> {
        let mut conn = self.redis.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(members_key(group_id))
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
    ) -> Result<Result<Option<Group>, ChangeRefused>, StateError> {
        let mut conn = self.redis.clone();
        let script = redis::Script::new(CHANGE);
        let mut invocation = script.key(members_key(group_id));
        invocation
            .key(admins_key(group_id))
            .arg(change.actor)
            .arg(max_members)
            .arg(change.add.len())
            .arg(change.remove.len())
            .arg(change.add_admins.len())
            .arg(change.add)
            .arg(change.remove)
            .arg(change.add_admins);
        let code: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(match code {
            0 => Ok(self.get(group_id).await?),
            1 => Err(ChangeRefused::NotFound),
            2 => Err(ChangeRefused::NotAdmin),
            3 => Err(ChangeRefused::Full),
            _ => Err(ChangeRefused::AdminNotMember),
        })
    }
}
