//! Groups at the edge: `CreateGroup`, `ChangeGroup`, `GetGroup` and sends to
//! a group.
//!
//! `CreateGroup{creator, members, name}` → `GroupUpdated{group_id, admins,
//! members, name}`: the creator (a user of the authenticated provider) is the
//! first admin. `ChangeGroup{group_id, actor, add, remove, add_admins, name}`
//! → `GroupUpdated`, only by an admin (`NOT_GROUP_ADMIN`), within
//! `MAX_GROUP_MEMBERS` (`GROUP_FULL`). After either, the members are told:
//! a `GroupChange` from the admin goes into the pipeline like a group send
//! (routing gives each member after the change, and each removed one, a
//! copy through the usual admission), and `GroupUpdated` is answered once
//! it is stored. A `Send` with `group_id` (and no `to`) is accepted only
//! from a member (`GROUP_NOT_FOUND` otherwise, the same code as for no
//! group); routing fans it out to every other member, each checked like a
//! one-to-one recipient.

use std::collections::BTreeSet;

use bytes::Bytes;
use prost::Message as _;
use tracing::{debug, warn};

use interop_proto::limits::{MAX_GROUP_CHANGE_ADDRESSES, MAX_GROUP_MEMBERS, MAX_GROUP_NAME_BYTES};
use interop_proto::v1::{
    envelope, server_frame, ChangeGroup, CreateGroup, Encryption, Envelope, GetGroup, GroupChange,
    GroupUpdated, PipelineMessage, RejectCode, ServerFrame,
};
use interop_proto::Address;
use interop_state::gcra;
use interop_state::group::{self, Change, ChangeRefused, Group, GroupStore};

use crate::send::{checks, provider_limit, rate_limited, reject, unavailable, Prepared, ToPublish};
use crate::validate::{check_group_id, validate_group_send, Rejection};
use crate::Shared;

fn updated(request_id: u64, g: Group) -> ServerFrame {
    ServerFrame {
        request_id,
        frame: Some(server_frame::Frame::GroupUpdated(GroupUpdated {
            group_id: g.id,
            admins: g.admins,
            members: g.members,
            name: g.name,
        })),
    }
}

/// Characters a name may not hold besides controls: line and paragraph
/// separators, zero-width and bidirectional formatting (a name could
/// otherwise reorder or hide the text around it where it is shown, e.g. in
/// the gateway's text for an app without group changes).
fn is_formatting(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// A group name: at most [`MAX_GROUP_NAME_BYTES`] of UTF-8 (prost checked
/// the encoding), no control, separator or formatting characters; empty is
/// no name.
pub fn validate_name(name: &str) -> Result<(), Rejection> {
    if name.len() > MAX_GROUP_NAME_BYTES {
        return Err(Rejection::new(
            RejectCode::TooLong,
            format!("a group name has at most {MAX_GROUP_NAME_BYTES} bytes"),
        ));
    }
    if name.chars().any(|c| c.is_control() || is_formatting(c)) {
        return Err(Rejection::new(
            RejectCode::MalformedFrame,
            "a group name has no control, line-separator or text-direction characters",
        ));
    }
    Ok(())
}

/// Tells the members about a change made by `actor` (`g`: the group after
/// it): a `GroupChange` stored like a group send, and `GroupUpdated` to the
/// admin once it is.
fn tell_members(
    provider: &str,
    request_id: u64,
    actor: &Address,
    g: Group,
    change: GroupChange,
) -> Prepared {
    let created = change.created;
    let message_id = uuid::Uuid::now_v7().to_string();
    let accepted_at_ms = interop_proto::now_ms();
    let notice = GroupChange {
        name: g.name.clone(),
        members: g.members.clone(),
        ..change
    };
    let pm = PipelineMessage {
        envelope: Some(Envelope {
            message_id: message_id.clone(),
            from: actor.as_str().to_owned(),
            group_id: g.id.clone(),
            encryption: Encryption::TransportOnly as i32,
            accepted_at_ms,
            content: Some(envelope::Content::GroupChange(notice)),
            ..Default::default()
        }),
        sender_provider: provider.to_owned(),
        ..Default::default()
    };
    let span = tracing::info_span!("group change", otel.name = "ingest group change", %provider, message_id = %message_id);
    Prepared::Publish(ToPublish {
        request_id,
        client_message_id: String::new(),
        message_id,
        accepted_at_ms,
        payload: Bytes::from(pm.encode_to_vec()),
        span,
        ephemeral_subject: None,
        resend: false,
        created_group: created.then(|| g.id.clone()),
        answer: Some(Box::new(updated(request_id, g))),
    })
}

/// Parses a list of addresses, without duplicates.
fn addresses(what: &str, list: &[String]) -> Result<Vec<String>, Rejection> {
    let mut out = BTreeSet::new();
    for a in list {
        let parsed = Address::parse(a)
            .map_err(|e| Rejection::new(RejectCode::InvalidAddress, format!("{what}: {e}")))?;
        out.insert(parsed.as_str().to_owned());
    }
    Ok(out.into_iter().collect())
}

fn own_user(provider: &str, what: &str, a: &str) -> Result<Address, Rejection> {
    if a.is_empty() {
        return Err(Rejection::new(
            RejectCode::MissingField,
            format!("{what} is required"),
        ));
    }
    let parsed = Address::parse(a)
        .map_err(|e| Rejection::new(RejectCode::InvalidAddress, format!("{what}: {e}")))?;
    if parsed.provider() != provider {
        return Err(Rejection::new(
            RejectCode::SenderNotOwned,
            format!("{what} must be a user of the authenticated provider"),
        ));
    }
    Ok(parsed)
}

/// A group change counts as one send against the provider's and the
/// admin's rate limits (it writes a notice to every member): `Err` is the
/// answer when it may not be made now.
async fn within_rate(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    actor: &Address,
) -> Result<(), Prepared> {
    let mut pipe = redis::pipe();
    gcra::add_check(
        &mut pipe,
        provider,
        actor.as_str(),
        provider_limit(shared, provider),
        shared.sender_limit,
    );
    match checks::<((i64, i64, i64),)>(shared, &pipe).await {
        Ok((rate,)) => match rate_limited(rate) {
            Some(limited) => Err(reject(request_id, "", limited)),
            None => Ok(()),
        },
        // Logged by `checks`.
        Err(_) => Err(reject(request_id, "", unavailable("state storage"))),
    }
}

/// Checks a `CreateGroup` and returns (creator, members without the creator).
pub fn validate_create(
    provider: &str,
    c: &CreateGroup,
) -> Result<(Address, Vec<String>), Rejection> {
    let creator = own_user(provider, "creator", &c.creator)?;
    validate_name(&c.name)?;
    if c.members.len() > MAX_GROUP_MEMBERS {
        return Err(full());
    }
    let mut members = addresses("members", &c.members)?;
    members.retain(|m| m != creator.as_str());
    if members.len() + 1 > MAX_GROUP_MEMBERS {
        return Err(full());
    }
    Ok((creator, members))
}

fn full() -> Rejection {
    Rejection::new(
        RejectCode::GroupFull,
        format!("a group has at most {MAX_GROUP_MEMBERS} members"),
    )
}

pub(crate) async fn create(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    c: CreateGroup,
) -> Prepared {
    let (creator, members) = match validate_create(provider, &c) {
        Ok(v) => v,
        Err(r) => return reject(request_id, "", r),
    };
    if let Err(answer) = within_rate(shared, provider, request_id, &creator).await {
        return answer;
    }
    let id = format!("g-{}", uuid::Uuid::now_v7().simple());
    match GroupStore::new(shared.records.clone())
        .create(&id, creator.as_str(), &members, &c.name)
        .await
    {
        Ok(g) => {
            debug!(%provider, members = g.members.len(), "Group created.");
            let change = GroupChange {
                created: true,
                added: members,
                new_admins: vec![creator.as_str().to_owned()],
                renamed: !c.name.is_empty(),
                ..Default::default()
            };
            tell_members(provider, request_id, &creator, g, change)
        }
        Err(e) => {
            warn!(error = %e, "Cannot store a group.");
            reject(request_id, "", unavailable("the group registry"))
        }
    }
}

/// The addresses a change names: (added, removed, made admins).
type Named = (Vec<String>, Vec<String>, Vec<String>);

/// Checks a `ChangeGroup` and returns the admin and the addresses it names.
pub fn validate_change(provider: &str, c: &ChangeGroup) -> Result<(Address, Named), Rejection> {
    check_group_id(&c.group_id)?;
    let actor = own_user(provider, "actor", &c.actor)?;
    if c.add.len() > MAX_GROUP_MEMBERS {
        return Err(full());
    }
    if c.add.len() + c.remove.len() + c.add_admins.len() > MAX_GROUP_CHANGE_ADDRESSES {
        return Err(Rejection::new(
            RejectCode::TooLong,
            format!(
                "a change names at most {MAX_GROUP_CHANGE_ADDRESSES} addresses in add, remove and add_admins together"
            ),
        ));
    }
    if let Some(name) = &c.name {
        validate_name(name)?;
    }
    let add = addresses("add", &c.add)?;
    let remove = addresses("remove", &c.remove)?;
    let add_admins = addresses("add_admins", &c.add_admins)?;
    if add.iter().any(|a| remove.contains(a)) {
        return Err(Rejection::new(
            RejectCode::MalformedFrame,
            "an address is both added and removed",
        ));
    }
    Ok((actor, (add, remove, add_admins)))
}

pub(crate) async fn change(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    c: ChangeGroup,
) -> Prepared {
    let checked = validate_change(provider, &c);
    let (actor, (add, remove, add_admins)) = match checked {
        Ok(v) => v,
        Err(r) => return reject(request_id, "", r),
    };
    if let Err(answer) = within_rate(shared, provider, request_id, &actor).await {
        return answer;
    }
    let change = Change {
        actor: actor.as_str(),
        add: &add,
        remove: &remove,
        add_admins: &add_admins,
        name: c.name.as_deref(),
    };
    let result = GroupStore::new(shared.records.clone())
        .change(&c.group_id, &change, MAX_GROUP_MEMBERS)
        .await;
    match result {
        Ok(Ok(changed)) => {
            let emptied = changed.group.is_none();
            let notice = GroupChange {
                added: add,
                // Only who was a member: naming others tells them nothing.
                removed: changed.removed,
                new_admins: add_admins,
                // A group emptied by the change has no name left to tell.
                renamed: c.name.is_some() && !emptied,
                ..Default::default()
            };
            let g = changed.group.unwrap_or_else(|| Group {
                id: c.group_id,
                ..Default::default()
            });
            let nothing_to_tell = notice.added.is_empty()
                && notice.removed.is_empty()
                && notice.new_admins.is_empty()
                && !notice.renamed;
            if nothing_to_tell {
                Prepared::Answer(Box::new(updated(request_id, g)))
            } else {
                tell_members(provider, request_id, &actor, g, notice)
            }
        }
        Ok(Err(refused)) => {
            let r = match refused {
                ChangeRefused::NotFound => {
                    Rejection::new(RejectCode::GroupNotFound, "no such group")
                }
                ChangeRefused::NotAdmin => Rejection::new(
                    RejectCode::NotGroupAdmin,
                    "only the group's admins may change it",
                ),
                ChangeRefused::Full => full(),
                ChangeRefused::AdminNotMember => Rejection::new(
                    RejectCode::MalformedFrame,
                    "add_admins must be members of the group",
                ),
            };
            reject(request_id, "", r)
        }
        Err(e) => {
            warn!(error = %e, "Cannot change a group.");
            reject(request_id, "", unavailable("the group registry"))
        }
    }
}

/// `GetGroup`: the group as it is now, for one of its members only (anyone
/// else, and a group that does not exist, get `GROUP_NOT_FOUND`).
pub(crate) async fn get(shared: &Shared, provider: &str, request_id: u64, g: GetGroup) -> Prepared {
    let user = match check_group_id(&g.group_id).and_then(|()| own_user(provider, "user", &g.user))
    {
        Ok(u) => u,
        Err(r) => return reject(request_id, "", r),
    };
    match GroupStore::new(shared.records.clone())
        .get(&g.group_id)
        .await
    {
        Ok(Some(group)) if group.members.iter().any(|m| m == user.as_str()) => {
            Prepared::Answer(Box::new(updated(request_id, group)))
        }
        Ok(_) => reject(
            request_id,
            "",
            Rejection::new(RejectCode::GroupNotFound, "no such group"),
        ),
        Err(e) => {
            warn!(error = %e, "Cannot read a group.");
            reject(request_id, "", unavailable("the group registry"))
        }
    }
}

/// A `Send` to a group: validated, rate-limited like any send, accepted only
/// from a member, idempotent by client message id, then published like a
/// one-to-one message (routing fans it out).
pub(crate) async fn prepare_group_send(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    mut envelope: Envelope,
) -> Prepared {
    let cmid = envelope.client_message_id.clone();
    let from = match validate_group_send(provider, &envelope, shared.max_sent_at_age_ms) {
        Ok(a) => a,
        Err(r) => {
            debug!(%provider, code = r.code.as_str_name(), "Rejected a group send.");
            return reject(request_id, &cmid, r);
        }
    };
    let fresh_id = uuid::Uuid::now_v7().to_string();
    let idem_key = interop_state::keys::idem(from.as_str(), &cmid);
    let provider_limit = provider_limit(shared, provider);
    let mut pipe = redis::pipe();
    gcra::add_check(
        &mut pipe,
        provider,
        from.as_str(),
        provider_limit,
        shared.sender_limit,
    );
    // Membership, refreshing the group's lifetime at most once a day.
    group::add_member_check(&mut pipe, &envelope.group_id, from.as_str());
    pipe.cmd("SET")
        .arg(&idem_key)
        .arg(&fresh_id)
        .arg("NX")
        .arg("GET")
        .arg("EX")
        .arg(shared.idempotency_secs);
    type Reply = ((i64, i64, i64), i64, Option<String>);
    let (rate, member, existing) = match checks::<Reply>(shared, &pipe).await {
        Ok(r) => r,
        // Logged by `checks`.
        Err(_) => return reject(request_id, &cmid, unavailable("state storage")),
    };
    if let Some(limited) = rate_limited(rate) {
        return reject(request_id, &cmid, limited);
    }
    let groups = GroupStore::new(shared.records.clone());
    let member = match group::MemberCheck::from_reply(member) {
        group::MemberCheck::Member => true,
        group::MemberCheck::NotMember => false,
        group::MemberCheck::MemberTouchDue => {
            // Once a day per group: the record must not age out while the
            // group is used (docs/adr/0028).
            let groups = groups.clone();
            let id = envelope.group_id.clone();
            tokio::spawn(async move {
                if let Err(e) = groups.touch(&id).await {
                    warn!(error = %e, "Cannot refresh a group's lifetime; the next send tries again.");
                }
            });
            true
        }
        // Not cached (Redis lost it): load it from the stream.
        group::MemberCheck::NotCached => {
            match groups.is_member(&envelope.group_id, from.as_str()).await {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "User state unavailable; refusing group sends.");
                    return reject(request_id, &cmid, unavailable("state storage"));
                }
            }
        }
    };
    if !member {
        return reject(
            request_id,
            &cmid,
            Rejection::new(RejectCode::GroupNotFound, "no such group"),
        );
    }
    let resend = existing.is_some();
    let message_id = existing.unwrap_or(fresh_id);
    let accepted_at_ms = interop_proto::now_ms();
    envelope.message_id.clone_from(&message_id);
    envelope.accepted_at_ms = accepted_at_ms;
    envelope.sender_info = None;
    if matches!(
        envelope.content,
        Some(interop_proto::v1::envelope::Content::Typing(_))
    ) {
        return group_typing(shared, provider, request_id, envelope).await;
    }
    let pm = PipelineMessage {
        envelope: Some(envelope),
        sender_provider: provider.to_owned(),
        ..Default::default()
    };
    let span = tracing::info_span!("send", otel.name = "ingest group send", %provider, message_id = %message_id);
    Prepared::Publish(ToPublish {
        request_id,
        client_message_id: cmid,
        message_id,
        accepted_at_ms,
        payload: Bytes::from(pm.encode_to_vec()),
        span,
        ephemeral_subject: None,
        resend,
        answer: None,
        created_group: None,
    })
}

/// Typing in a group: core NATS to each member's open sessions (one copy
/// per member, `to` set to the member), never stored, after the same
/// admission as a one-to-one typing indicator for each member: only members
/// who accepted the sender see it. `Accepted` whoever saw it, so a blocked
/// sender learns nothing.
async fn group_typing(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    envelope: Envelope,
) -> Prepared {
    let unavailable_now = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "Redis unavailable; refusing a group typing indicator.");
        reject(
            request_id,
            &envelope.client_message_id,
            unavailable("state storage"),
        )
    };
    let members = match GroupStore::new(shared.records.clone())
        .members(&envelope.group_id)
        .await
    {
        Ok(m) => m,
        Err(e) => return unavailable_now(&e),
    };
    let members: Vec<String> = members
        .into_iter()
        .filter(|m| *m != envelope.from)
        .collect();
    let contacts = interop_state::ContactStore::new(shared.records.clone());
    // Concurrent: the checks share one pipelined Redis connection.
    let admissions = futures_util::future::join_all(
        members
            .iter()
            .map(|m| contacts.admission(m, &envelope.from, provider)),
    )
    .await;
    for (member, admission) in members.iter().zip(admissions) {
        match admission {
            Ok(interop_state::Admission::Inbox(_)) => {}
            Ok(_) => continue,
            Err(e) => return unavailable_now(&e),
        }
        let copy = Envelope {
            to: member.clone(),
            ..envelope.clone()
        };
        let pm = PipelineMessage {
            envelope: Some(copy),
            sender_provider: provider.to_owned(),
            ..Default::default()
        };
        let subject = interop_bus::subjects::ephemeral_sent(&interop_bus::recipient_path(member));
        if let Err(e) = shared
            .js
            .client()
            .publish(subject, Bytes::from(pm.encode_to_vec()))
            .await
        {
            warn!(error = %e, "Cannot publish a group typing indicator.");
            return reject(
                request_id,
                &envelope.client_message_id,
                unavailable("the message bus"),
            );
        }
    }
    Prepared::Answer(Box::new(crate::send::accepted(
        request_id,
        envelope.client_message_id,
        envelope.message_id,
        envelope.accepted_at_ms,
        false,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: usize) -> String {
        format!("telegram:user{i}")
    }

    #[test]
    fn group_size_at_the_edge() {
        let mut c = CreateGroup {
            creator: "signal:alice".into(),
            members: (1..MAX_GROUP_MEMBERS).map(member).collect(),
            name: String::new(),
        };
        // The creator plus 255 others: exactly the limit.
        let (_, members) = validate_create("signal", &c).unwrap();
        assert_eq!(members.len() + 1, MAX_GROUP_MEMBERS);
        // Naming the creator again does not count twice.
        c.members.push("signal:alice".into());
        assert!(validate_create("signal", &c).is_ok());
        c.members.pop();
        c.members.push(member(MAX_GROUP_MEMBERS));
        assert_eq!(
            validate_create("signal", &c).unwrap_err().code,
            RejectCode::GroupFull
        );
    }

    #[test]
    fn creator_must_be_own_user_and_members_addresses() {
        let c = CreateGroup {
            creator: "home:+4915112345678".into(),
            members: vec![],
            name: String::new(),
        };
        assert_eq!(
            validate_create("signal", &c).unwrap_err().code,
            RejectCode::SenderNotOwned
        );
        let c = CreateGroup {
            creator: "signal:alice".into(),
            members: vec!["nope".into()],
            name: String::new(),
        };
        assert_eq!(
            validate_create("signal", &c).unwrap_err().code,
            RejectCode::InvalidAddress
        );
    }

    #[test]
    fn a_group_name_at_the_edge() {
        let name = |n: String| CreateGroup {
            creator: "signal:alice".into(),
            members: vec![member(1)],
            name: n,
        };
        assert!(validate_create("signal", &name("a".repeat(MAX_GROUP_NAME_BYTES))).is_ok());
        assert_eq!(
            validate_create("signal", &name("a".repeat(MAX_GROUP_NAME_BYTES + 1)))
                .unwrap_err()
                .code,
            RejectCode::TooLong
        );
        // Bytes, not characters: 43 three-byte characters are 129 bytes.
        assert_eq!(
            validate_create("signal", &name("€".repeat(43)))
                .unwrap_err()
                .code,
            RejectCode::TooLong
        );
        assert!(validate_create("signal", &name("€".repeat(42))).is_ok());
        for bad in ["Ski\ntrip", "Ski\u{202E}pirt", "a\u{2028}b", "\u{200B}"] {
            assert_eq!(
                validate_create("signal", &name(bad.into()))
                    .unwrap_err()
                    .code,
                RejectCode::MalformedFrame,
                "{bad:?}"
            );
        }
        assert!(validate_create("signal", &name("Ski trip 🎿 \"2027\"".into())).is_ok());
        assert!(validate_create("signal", &name(String::new())).is_ok());
        // The same rules for a rename.
        let rename = |n: &str| ChangeGroup {
            group_id: format!("g-{}", "0".repeat(32)),
            actor: "signal:alice".into(),
            name: Some(n.into()),
            ..Default::default()
        };
        assert!(validate_change("signal", &rename("Family")).is_ok());
        assert!(validate_change("signal", &rename("")).is_ok());
        assert_eq!(
            validate_change("signal", &rename(&"a".repeat(MAX_GROUP_NAME_BYTES + 1)))
                .unwrap_err()
                .code,
            RejectCode::TooLong
        );
    }

    #[test]
    fn a_change_names_at_most_256_addresses() {
        let change = |add: usize, remove: usize, admins: usize| ChangeGroup {
            group_id: format!("g-{}", "0".repeat(32)),
            actor: "signal:alice".into(),
            add: (0..add).map(member).collect(),
            remove: (add..add + remove).map(member).collect(),
            add_admins: (0..admins).map(member).collect(),
            name: None,
        };
        let (_, (add, remove, admins)) = validate_change("signal", &change(100, 100, 56)).unwrap();
        assert_eq!((add.len(), remove.len(), admins.len()), (100, 100, 56));
        assert_eq!(
            validate_change("signal", &change(100, 100, 57))
                .unwrap_err()
                .code,
            RejectCode::TooLong
        );
        assert_eq!(
            validate_change("signal", &change(MAX_GROUP_MEMBERS + 1, 0, 0))
                .unwrap_err()
                .code,
            RejectCode::GroupFull
        );
    }

    #[test]
    fn the_largest_group_change_fits_a_frame() {
        use interop_proto::limits::{MAX_FRAME_BYTES, MAX_PROVIDER_ID_BYTES, MAX_USER_BYTES};
        use interop_proto::v1::{Deliver, SenderInfo};
        // The longest addresses: a 32-byte provider id and a 128-byte user.
        let longest = |i: usize| {
            let user = format!("{i:0>width$}", width = MAX_USER_BYTES);
            format!("{}:{user}", "p".repeat(MAX_PROVIDER_ID_BYTES))
        };
        let members: Vec<String> = (0..MAX_GROUP_MEMBERS).map(longest).collect();
        let named: Vec<String> = (0..MAX_GROUP_CHANGE_ADDRESSES).map(longest).collect();
        let (added, rest) = named.split_at(MAX_GROUP_CHANGE_ADDRESSES / 2);
        let (removed, new_admins) = rest.split_at(rest.len() / 2);
        let frame = ServerFrame {
            request_id: 0,
            frame: Some(server_frame::Frame::Deliver(Deliver {
                delivery_tag: u64::MAX,
                inbox: 1,
                user: String::new(),
                envelope: Some(Envelope {
                    message_id: uuid::Uuid::now_v7().to_string(),
                    from: longest(0),
                    to: longest(1),
                    group_id: format!("g-{}", "f".repeat(32)),
                    accepted_at_ms: i64::MAX,
                    encryption: Encryption::TransportOnly as i32,
                    sender_info: Some(SenderInfo {
                        provider: "p".repeat(MAX_PROVIDER_ID_BYTES),
                        display_name: "d".repeat(256),
                        privacy_policy_url: "u".repeat(2048),
                        provider_encryption: 1,
                    }),
                    content: Some(envelope::Content::GroupChange(GroupChange {
                        created: true,
                        added: added.to_vec(),
                        removed: removed.to_vec(),
                        new_admins: new_admins.to_vec(),
                        renamed: true,
                        name: "n".repeat(MAX_GROUP_NAME_BYTES),
                        members,
                    })),
                    ..Default::default()
                }),
            })),
        };
        let size = frame.encoded_len();
        assert!(size < MAX_FRAME_BYTES, "{size} bytes");
        // And with room to spare (ADR 20 says about 83 KB).
        assert!(size < 90_000, "{size} bytes");
    }
}
