//! Who sends what to whom: a pure function of the sequence number, so the
//! sending side and the receiving side agree without sharing state.
//!
//! Every message carries its run id, sequence number and actual send time in
//! its client message id, `lt.<run>.<seq>.<sent_us>`, which the gateway
//! passes through to the recipient and into receipts.

use std::fmt::Write as _;

use bytes::Bytes;

use interop_proto::v1::{envelope, Ciphertext, Encryption, Envelope, Media, Text};
use interop_proto::HOME_PROVIDER;

use crate::scenario::{Scenario, SizeWeight};

/// A run's id: six digits, so it fits in E.164 numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct RunId(pub u32);

impl RunId {
    /// A fresh id from the clock and the process id.
    pub fn fresh() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self((mix64(nanos ^ u64::from(std::process::id()) << 32) % 1_000_000) as u32)
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

/// splitmix64's finalizer: a cheap, well-mixed hash of a u64.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which sender sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Normal(u32),
    Spammer(u32),
    /// The sender (creator and admin) of group `n`: sends only to it.
    GroupAdmin(u32),
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub from: Origin,
    pub to: u32,
    pub e2ee: bool,
    /// Index into the text or ciphertext size table.
    pub size: usize,
    /// A normal sender's message to a stranger (`users.strangers`).
    pub first_contact: bool,
    /// A group message: its ordinal among the run's group messages (the
    /// group is `ordinal % groups`; each member's copy has its own slot).
    pub group_ordinal: Option<u64>,
    /// A media message: the index into `mix.media_sizes`, and a draw that
    /// picks one of that size's pre-uploaded blobs.
    pub media: Option<(usize, u64)>,
}

/// The parsed client message id of one of our messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub run: RunId,
    pub seq: u64,
    pub sent_us: u64,
}

/// Writes `lt.<run>.<seq>.<sent_us>` (at most 40 bytes of the allowed set).
pub fn client_message_id(run: RunId, seq: u64, sent_us: u64) -> String {
    let mut s = String::with_capacity(40);
    // Writing into a String cannot fail.
    w!(s, "lt.{run}.{seq}.{sent_us}");
    s
}

/// Reads a client message id written by [`client_message_id`].
pub fn parse_client_message_id(s: &str) -> Option<Tag> {
    let mut parts = s.strip_prefix("lt.")?.splitn(3, '.');
    let run = parts.next()?;
    if run.len() != 6 {
        return None;
    }
    Some(Tag {
        run: RunId(run.parse().ok()?),
        seq: parts.next()?.parse().ok()?,
        sent_us: parts.next()?.parse().ok()?,
    })
}

/// A weighted choice among sizes, by a number in 0..total weight.
#[derive(Debug, Clone)]
struct Sizes {
    /// Cumulative weights.
    cumulative: Vec<u64>,
    total: u64,
}

impl Sizes {
    fn new(sizes: &[SizeWeight]) -> Self {
        let mut acc = 0;
        let cumulative = sizes
            .iter()
            .map(|s| {
                acc += u64::from(s.weight);
                acc
            })
            .collect();
        Self {
            cumulative,
            total: acc,
        }
    }

    fn pick(&self, r: u64) -> usize {
        if self.total == 0 {
            return 0;
        }
        let x = r % self.total;
        self.cumulative.partition_point(|&c| c <= x)
    }
}

const PPM: u64 = 1_000_000;

/// The message plan of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub run: RunId,
    senders: Vec<String>,
    spammers: Vec<String>,
    recipients: Vec<String>,
    receipt_senders: u32,
    /// The first `contacts` recipients accept every normal sender; the rest
    /// are strangers.
    contacts: u32,
    strangers: u32,
    first_contact_ppm: u64,
    spam_ppm: u64,
    e2ee_ppm: u64,
    text_sizes: Sizes,
    cipher_sizes: Sizes,
    /// Prepared content of each size (cloning `Bytes` copies nothing).
    texts: Vec<String>,
    ciphertexts: Vec<Bytes>,
    group_admins: Vec<String>,
    members_per_group: u32,
    group_ppm: u64,
    /// The gateway's group ids, set once the groups are created.
    group_ids: std::sync::OnceLock<Vec<String>>,
    media_ppm: u64,
    media_sizes: Sizes,
    /// The pre-uploaded blobs of each media size, set at set-up.
    media_pool: std::sync::OnceLock<Vec<Vec<crate::media::Uploaded>>>,
    /// Recipient address → index in `recipients`.
    recipient_index: std::collections::HashMap<String, u32>,
}

/// An address of a user of `provider` made for this run: home users need
/// E.164 numbers (`+49` then a digit for the role, the six-digit run id
/// and a five-digit index: 14 digits), others get readable ids.
fn address(provider: &str, run: RunId, role: u8, index: u32) -> String {
    if provider == HOME_PROVIDER {
        format!("{provider}:+49{role}{run}{index:05}")
    } else {
        let name = match role {
            1 => "r",
            2 => "s",
            4 => "n",
            5 => "g",
            _ => "x",
        };
        format!("{provider}:lt-{run}-{name}{index}")
    }
}

fn filler_text(bytes: usize) -> String {
    const WORDS: &str = "the quick brown fox jumps over the lazy dog and keeps on running ";
    WORDS.chars().cycle().take(bytes).collect()
}

/// A text that starts with words unique to `seq` (letters, since the
/// gateway's payload fingerprint ignores digits), padded to `bytes`.
fn unique_text(seq: u64, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes.max(40));
    for part in [seq, mix64(seq)] {
        let mut x = part;
        for _ in 0..8 {
            out.push(char::from(b'a' + (x % 26) as u8));
            x /= 26;
        }
        out.push(' ');
    }
    out.push_str(&filler_text(bytes.saturating_sub(out.len())));
    out
}

/// A scam text: the same words every time, only the numbers change.
fn spam_text(seq: u64) -> String {
    let h = mix64(seq);
    format!(
        "WINNER!! You have been selected for a {} EUR cash prize. Call 0906{:07} now or claim at http://bit.ly/{} T&C apply",
        500 + h % 1000,
        (h >> 10) % 10_000_000,
        (h >> 40) % 100_000
    )
}

fn filler_bytes(bytes: usize, seed: u64) -> Bytes {
    let mut out = Vec::with_capacity(bytes + 8);
    let mut i = seed;
    while out.len() < bytes {
        i += 1;
        out.extend_from_slice(&mix64(i).to_le_bytes());
    }
    out.truncate(bytes);
    Bytes::from(out)
}

impl Plan {
    pub fn new(scenario: &Scenario, run: RunId) -> Self {
        let u = &scenario.file.users;
        let m = &scenario.file.mix;
        let recipients: Vec<String> = (0..u.recipients)
            .map(|i| address(&u.recipient_provider, run, 1, i))
            .chain((0..u.strangers).map(|i| address(&u.recipient_provider, run, 4, i)))
            .collect();
        let groups = if m.group_share > 0.0 { u.groups } else { 0 };
        Self {
            run,
            group_admins: (0..groups)
                .map(|i| address(&u.sender_provider, run, 5, i))
                .collect(),
            members_per_group: u.members_per_group,
            group_ppm: if groups > 0 {
                (m.group_share * PPM as f64).round() as u64
            } else {
                0
            },
            group_ids: std::sync::OnceLock::new(),
            media_ppm: (m.media_share * PPM as f64).round() as u64,
            media_sizes: Sizes::new(&m.media_sizes),
            media_pool: std::sync::OnceLock::new(),
            recipient_index: recipients
                .iter()
                .enumerate()
                .map(|(i, r)| (r.clone(), i as u32))
                .collect(),
            senders: (0..scenario.senders)
                .map(|i| address(&u.sender_provider, run, 2, i))
                .collect(),
            spammers: (0..scenario.spammers)
                .map(|i| address(&u.sender_provider, run, 3, i))
                .collect(),
            recipients,
            receipt_senders: scenario.receipt_senders,
            contacts: u.recipients,
            strangers: u.strangers,
            first_contact_ppm: (m.first_contact_share * PPM as f64).round() as u64,
            spam_ppm: (scenario.spam_share * PPM as f64).round() as u64,
            e2ee_ppm: (m.e2ee_share * PPM as f64).round() as u64,
            text_sizes: Sizes::new(&m.text_sizes),
            cipher_sizes: Sizes::new(&m.ciphertext_sizes),
            texts: m
                .text_sizes
                .iter()
                .map(|s| filler_text(s.bytes as usize))
                .collect(),
            ciphertexts: m
                .ciphertext_sizes
                .iter()
                .map(|s| filler_bytes(s.bytes as usize, u64::from(s.bytes)))
                .collect(),
        }
    }

    /// Every recipient: the contacts, then the strangers.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    /// The recipients who accept every normal sender before the run.
    pub fn contacts(&self) -> &[String] {
        &self.recipients[..self.contacts as usize]
    }

    /// Whether spammers fan out to strangers (rather than flood the contacts).
    pub fn spam_to_strangers(&self) -> bool {
        self.strangers > 0
    }

    pub fn senders(&self) -> &[String] {
        &self.senders
    }

    pub fn spammers(&self) -> &[String] {
        &self.spammers
    }

    /// Senders that hold a receipt session: the first normal ones, and every
    /// spammer.
    pub fn receipt_sessions(&self) -> impl Iterator<Item = &str> {
        self.senders[..self.receipt_senders as usize]
            .iter()
            .chain(&self.spammers)
            .map(String::as_str)
    }

    /// Whether the sender of `seq` has a receipt session.
    pub fn has_receipts(&self, planned: &Planned) -> bool {
        match planned.from {
            Origin::Normal(i) => i < self.receipt_senders,
            Origin::Spammer(_) => true,
            Origin::GroupAdmin(_) => false,
        }
    }

    /// The message `seq`: spam is spread evenly through the run (exactly
    /// `share` of every stretch), each kind of sender takes its turn round
    /// robin, so every sender's rate is the same; recipient, encryption and
    /// size are drawn from a hash of `seq`.
    pub fn at(&self, seq: u64) -> Planned {
        let spam_through = (seq + 1) * self.spam_ppm / PPM;
        let spam_before = seq * self.spam_ppm / PPM;
        let mut group_ordinal = None;
        let from = if spam_through > spam_before && !self.spammers.is_empty() {
            Origin::Spammer((spam_before % self.spammers.len() as u64) as u32)
        } else if self.senders.is_empty() {
            Origin::Spammer((seq % self.spammers.len().max(1) as u64) as u32)
        } else {
            let normal_index = seq - spam_through;
            // Group messages are spread evenly among the normal ones.
            let group_through = (normal_index + 1) * self.group_ppm / PPM;
            let group_before = normal_index * self.group_ppm / PPM;
            if group_through > group_before {
                group_ordinal = Some(group_before);
                Origin::GroupAdmin((group_before % self.group_admins.len() as u64) as u32)
            } else {
                let index = normal_index - group_through;
                Origin::Normal((index % self.senders.len() as u64) as u32)
            }
        };
        let h = mix64(seq ^ (u64::from(self.run.0) << 40));
        let h2 = mix64(h);
        let first_contact = matches!(from, Origin::Normal(_))
            && self.strangers > 0
            && ((h2 >> 44) * PPM) >> 20 < self.first_contact_ppm;
        let to_stranger =
            first_contact || (self.strangers > 0 && matches!(from, Origin::Spammer(_)));
        let to = if to_stranger {
            self.contacts + ((h2 & 0xFFFF_FFFF) % u64::from(self.strangers)) as u32
        } else {
            ((h & 0xFFFF_FFFF) % u64::from(self.contacts).max(1)) as u32
        };
        let e2ee = ((((h >> 32) & 0xF_FFFF) * PPM) >> 20) < self.e2ee_ppm;
        let size_draw = h >> 52;
        let size = if e2ee {
            self.cipher_sizes.pick(size_draw)
        } else {
            self.text_sizes.pick(size_draw)
        };
        // Media: normal and group messages (first contacts and spam keep
        // their own content), by a draw of their own.
        let h3 = mix64(h2);
        let media = (!first_contact
            && !matches!(from, Origin::Spammer(_))
            && ((h3 & 0xF_FFFF) * PPM) >> 20 < self.media_ppm)
            .then(|| (self.media_sizes.pick(h3 >> 20), h3 >> 40));
        Planned {
            from,
            to,
            e2ee,
            size,
            first_contact,
            group_ordinal,
            media,
        }
    }

    /// Media sizes with a weight (the others are never picked), as
    /// `(index into mix.media_sizes, bytes)`.
    pub fn media_sizes_used(&self, sizes: &[crate::scenario::SizeWeight]) -> Vec<(usize, u32)> {
        if self.media_ppm == 0 {
            return Vec::new();
        }
        sizes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.weight > 0)
            .map(|(i, s)| (i, s.bytes))
            .collect()
    }

    /// Records the pre-uploaded blobs, per index of `mix.media_sizes`
    /// (set-up does; a size never picked may have none).
    pub fn set_media_pool(&self, pool: Vec<Vec<crate::media::Uploaded>>) {
        self.media_pool.set(pool).ok();
    }

    /// The blob a media message refers to.
    pub fn media_of(&self, planned: &Planned) -> Option<&crate::media::Uploaded> {
        let (size, draw) = planned.media?;
        let blobs = self.media_pool.get()?.get(size)?;
        (!blobs.is_empty()).then(|| &blobs[(draw % blobs.len() as u64) as usize])
    }

    /// The groups' senders (their creators and admins).
    pub fn group_admins(&self) -> &[String] {
        &self.group_admins
    }

    /// Copies each group message makes (its members besides the sender).
    pub fn members_per_group(&self) -> u32 {
        self.members_per_group
    }

    /// The recipients of group `g`: contacts, consecutive round the list.
    pub fn group_members(&self, g: u32) -> Vec<String> {
        let contacts = self.contacts.max(1);
        (0..self.members_per_group)
            .map(|j| {
                let i = (u64::from(g) * u64::from(self.members_per_group) + u64::from(j))
                    % u64::from(contacts);
                self.recipients[i as usize].clone()
            })
            .collect()
    }

    /// Records the gateway's ids of the groups, in order (set-up does).
    pub fn set_group_ids(&self, ids: Vec<String>) {
        self.group_ids.set(ids).ok();
    }

    /// Group messages among the first `total` sequence numbers, at most.
    pub fn group_messages_upper_bound(&self, total: u64) -> u64 {
        total * self.group_ppm / PPM + 1
    }

    /// The copy slot of a group message's copy delivered to `member`:
    /// `ordinal * members_per_group + j` where `member` is the group's
    /// `j`-th; `None` if `member` is not one of its members.
    pub fn copy_slot(&self, ordinal: u64, member: &str) -> Option<u64> {
        let groups = self.group_admins.len() as u64;
        if groups == 0 {
            return None;
        }
        let g = ordinal % groups;
        let r = u64::from(*self.recipient_index.get(member)?);
        let contacts = u64::from(self.contacts.max(1));
        let m = u64::from(self.members_per_group);
        if r >= contacts {
            return None;
        }
        let j = (r + contacts - (g * m) % contacts) % contacts;
        (j < m).then_some(ordinal * m + j)
    }

    pub fn sender_address(&self, from: Origin) -> &str {
        match from {
            Origin::Normal(i) => &self.senders[i as usize],
            Origin::Spammer(i) => &self.spammers[i as usize],
            Origin::GroupAdmin(i) => &self.group_admins[i as usize],
        }
    }

    /// The envelope of message `seq`, stamped with its actual send time.
    /// First contacts carry content unique to the message; fan-out spam is
    /// a near-identical text (only its numbers change) or a ciphertext
    /// unique to the message (as real E2EE spam would be), from an account
    /// a day old.
    pub fn envelope(&self, seq: u64, planned: &Planned, sent_us: u64) -> Envelope {
        let fanout_spam = self.spam_to_strangers() && matches!(planned.from, Origin::Spammer(_));
        let mut env = self.base_envelope(seq, planned, sent_us);
        if fanout_spam || planned.first_contact {
            let size = self.content_bytes(planned);
            env.content = Some(if planned.e2ee {
                envelope::Content::Ciphertext(Ciphertext {
                    scheme: "loadtest".into(),
                    payload: filler_bytes(size, mix64(seq ^ 0x5eed)),
                    ..Default::default()
                })
            } else if fanout_spam {
                envelope::Content::Text(Text {
                    body: spam_text(seq),
                })
            } else {
                envelope::Content::Text(Text {
                    body: unique_text(seq, size),
                })
            });
        }
        if fanout_spam {
            env.sender_account_created_at_ms = interop_proto::now_ms() - 86_400_000;
        }
        if let Some(m) = self.media_of(planned) {
            env.encryption = Encryption::E2ee as i32;
            env.content = Some(envelope::Content::Media(Media {
                media_id: m.media_id.clone(),
                content_type: crate::media::CONTENT_TYPE.into(),
                size: m.size,
                sha256: m.sha256.clone(),
                ..Default::default()
            }));
        }
        if let (Origin::GroupAdmin(g), Some(ids)) = (planned.from, self.group_ids.get()) {
            env.to.clear();
            env.group_id = ids.get(g as usize).cloned().unwrap_or_default();
        }
        env
    }

    fn base_envelope(&self, seq: u64, planned: &Planned, sent_us: u64) -> Envelope {
        let content = if planned.e2ee {
            envelope::Content::Ciphertext(Ciphertext {
                scheme: "loadtest".into(),
                payload: self.ciphertexts[planned.size].clone(),
                ..Default::default()
            })
        } else {
            envelope::Content::Text(Text {
                body: self.texts[planned.size].clone(),
            })
        };
        Envelope {
            client_message_id: client_message_id(self.run, seq, sent_us),
            from: self.sender_address(planned.from).to_owned(),
            to: self.recipients[planned.to as usize].clone(),
            sent_at_ms: interop_proto::now_ms(),
            encryption: if planned.e2ee {
                Encryption::E2ee
            } else {
                Encryption::TransportOnly
            } as i32,
            content: Some(content),
            ..Default::default()
        }
    }

    /// Content bytes of a planned message.
    pub fn content_bytes(&self, planned: &Planned) -> usize {
        if planned.e2ee {
            self.ciphertexts[planned.size].len()
        } else {
            self.texts[planned.size].len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_proto::Address;

    fn scenario(extra: &str) -> Scenario {
        Scenario::from_toml(&format!(
            "name='t'\n[rate]\nmsgs_per_s=100\nduration_s=10\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn client_message_ids_round_trip_and_foreign_ids_are_ignored() {
        let run = RunId(42);
        let id = client_message_id(run, 123_456_789, 987_654_321_000);
        assert_eq!(id, "lt.000042.123456789.987654321000");
        assert!(id.len() <= interop_proto::limits::MAX_CLIENT_MESSAGE_ID_BYTES);
        assert_eq!(
            parse_client_message_id(&id),
            Some(Tag {
                run,
                seq: 123_456_789,
                sent_us: 987_654_321_000
            })
        );
        for bad in ["c-1", "lt.42.1.2", "lt.000042.x.2", "lt.000042.1", ""] {
            assert_eq!(parse_client_message_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn addresses_are_valid_for_their_providers() {
        let s = scenario("[users]\nrecipients = 3\n[spammers]\ncount=1\nshare=0.5");
        let plan = Plan::new(&s, RunId(7));
        let all = plan
            .recipients()
            .iter()
            .chain(plan.senders())
            .chain(plan.spammers());
        for a in all {
            Address::parse(a).unwrap_or_else(|e| panic!("{a}: {e}"));
        }
        assert_eq!(plan.recipients()[2], "home:+49100000700002");
        assert_eq!(plan.spammers()[0], "signal:lt-000007-x0");
        let reversed = scenario("[users]\nsender_provider='home'\nrecipient_provider='signal'");
        let plan = Plan::new(&reversed, RunId(999_999));
        Address::parse(&plan.senders()[0]).unwrap();
        Address::parse(&plan.recipients()[0]).unwrap();
    }

    #[test]
    fn the_mix_follows_the_scenario() {
        let s = scenario(
            "[mix]\ne2ee_share=0.3\nreceipt_share=0.5\n\
             text_sizes=[{bytes=10,weight=3},{bytes=100,weight=1}]\n\
             [users]\nspam_limit_per_min=100\nsender_budget_per_min=60\n\
             [spammers]\ncount=2\nshare=0.1",
        );
        let plan = Plan::new(&s, RunId(1));
        let n = 100_000u64;
        let (mut spam, mut e2ee, mut big_text, mut text) = (0, 0, 0, 0);
        let mut per_sender = vec![0u64; plan.senders().len()];
        let mut per_spammer = [0u64; 2];
        for seq in 0..n {
            let p = plan.at(seq);
            match p.from {
                Origin::Normal(i) => per_sender[i as usize] += 1,
                Origin::Spammer(i) => {
                    spam += 1;
                    per_spammer[i as usize] += 1;
                }
                Origin::GroupAdmin(_) => unreachable!("no groups"),
            }
            if p.e2ee {
                e2ee += 1;
            } else {
                text += 1;
                big_text += u64::from(plan.content_bytes(&p) == 100);
            }
            let env = plan.envelope(seq, &p, 5);
            assert_eq!(
                parse_client_message_id(&env.client_message_id).unwrap().seq,
                seq
            );
        }
        // Exactly a tenth is spam, split evenly; normal senders are even.
        assert_eq!(spam, 10_000);
        assert_eq!(per_spammer, [5_000, 5_000]);
        let (min, max) = (
            per_sender.iter().min().unwrap(),
            per_sender.iter().max().unwrap(),
        );
        assert!(max - min <= 1, "{min}..{max}");
        let share = e2ee as f64 / n as f64;
        assert!((share - 0.3).abs() < 0.01, "{share}");
        let big = big_text as f64 / text as f64;
        assert!((big - 0.25).abs() < 0.01, "{big}");
        assert_eq!(
            plan.receipt_sessions().count(),
            s.receipt_senders as usize + 2
        );
        assert!(plan.has_receipts(&Planned {
            from: Origin::Spammer(1),
            to: 0,
            e2ee: false,
            size: 0,
            first_contact: false,
            group_ordinal: None,
            media: None,
        }));
    }

    #[test]
    fn group_messages_are_spread_evenly_and_each_member_has_its_own_copy_slot() {
        let s = scenario(
            "[users]\nrecipients = 10\ngroups = 3\nmembers_per_group = 4\n[mix]\ngroup_share = 0.2",
        );
        let plan = Plan::new(&s, RunId(3));
        assert_eq!(plan.group_admins().len(), 3);
        assert_eq!(plan.group_admins()[1], "signal:lt-000003-g1");
        plan.set_group_ids(vec!["g-a".into(), "g-b".into(), "g-c".into()]);
        let mut ordinals = Vec::new();
        for seq in 0..10_000 {
            let p = plan.at(seq);
            let env = plan.envelope(seq, &p, 0);
            match (p.from, p.group_ordinal) {
                (Origin::GroupAdmin(g), Some(o)) => {
                    assert_eq!(u64::from(g), o % 3);
                    assert!(env.to.is_empty());
                    assert_eq!(env.group_id, ["g-a", "g-b", "g-c"][g as usize]);
                    ordinals.push(o);
                }
                (Origin::Normal(_), None) => assert!(env.group_id.is_empty()),
                other => panic!("{other:?}"),
            }
        }
        // Exactly a fifth, numbered 0, 1, 2, …
        assert_eq!(ordinals, (0..2_000).collect::<Vec<_>>());
        for o in [0u64, 1, 2, 7, 1_999] {
            let g = (o % 3) as u32;
            let members = plan.group_members(g);
            assert_eq!(members.len(), 4);
            let slots: Vec<u64> = members
                .iter()
                .map(|m| plan.copy_slot(o, m).unwrap())
                .collect();
            assert_eq!(slots, (o * 4..o * 4 + 4).collect::<Vec<_>>());
            let outsider = plan
                .contacts()
                .iter()
                .find(|c| !members.contains(c))
                .unwrap();
            assert_eq!(plan.copy_slot(o, outsider), None);
            assert_eq!(plan.copy_slot(o, "home:+490"), None);
        }
        assert!(plan.group_messages_upper_bound(10_000) >= 2_000);
    }

    #[test]
    fn first_contacts_and_fan_out_spam_go_to_strangers_with_their_own_content() {
        let s = scenario(
            "[users]\nrecipients = 4\nstrangers = 50\n[mix]\nfirst_contact_share = 0.1\ne2ee_share = 0.5\n[spammers]\ncount=1\nshare=0.2",
        );
        let plan = Plan::new(&s, RunId(7));
        assert_eq!(plan.recipients().len(), 54);
        assert_eq!(plan.contacts().len(), 4);
        let (mut firsts, mut normal, mut spam_texts) = (0u64, 0u64, Vec::new());
        for seq in 0..20_000 {
            let p = plan.at(seq);
            let env = plan.envelope(seq, &p, 0);
            match p.from {
                Origin::Spammer(_) => {
                    assert!(p.to >= 4, "spam goes to strangers");
                    assert!(env.sender_account_created_at_ms > 0);
                    if let Some(envelope::Content::Text(t)) = env.content {
                        spam_texts.push(t.body);
                    }
                }
                Origin::Normal(_) => {
                    normal += 1;
                    assert_eq!(p.first_contact, p.to >= 4);
                    firsts += u64::from(p.first_contact);
                    assert_eq!(env.sender_account_created_at_ms, 0);
                }
                Origin::GroupAdmin(_) => unreachable!("no groups"),
            }
        }
        let share = firsts as f64 / normal as f64;
        assert!((0.09..0.11).contains(&share), "{share}");
        // Near-identical: same letters, different numbers.
        let letters = |t: &str| t.chars().filter(|c| c.is_alphabetic()).collect::<String>();
        assert!(spam_texts.len() > 100);
        assert!(spam_texts
            .iter()
            .all(|t| letters(t) == letters(&spam_texts[0])));
        assert_ne!(spam_texts[0], spam_texts[1]);
        // First-contact texts differ in their letters.
        let a = plan.envelope(
            1,
            &Planned {
                first_contact: true,
                ..plan.at(1)
            },
            0,
        );
        let b = plan.envelope(
            2,
            &Planned {
                first_contact: true,
                ..plan.at(2)
            },
            0,
        );
        assert_ne!(a.content, b.content);
    }
}
