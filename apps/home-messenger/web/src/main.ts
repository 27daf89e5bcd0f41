// The home messenger's web app: sign-in as a demo user; interop opt-in with
// the registry's providers; inboxes with the chats from other messaging apps
// apart (or combined); message requests; chats that say how they are
// protected, end-to-end encrypted in this browser (./e2ee.ts).

import { Connection } from "./conn";
import { openStore, type Store } from "./db";
import { E2ee, fingerprint, SCHEME } from "./e2ee";
import { RequestAction, type ServerFrame } from "./gen/interop/v1/client_pb";
import { Encryption, Inbox, ReceiptStatus, RejectCode, type Envelope, EnvelopeSchema } from "./gen/interop/v1/envelope_pb";
import type { MessageInitShape } from "@bufbuild/protobuf";

type EnvelopeInit = MessageInitShape<typeof EnvelopeSchema>;
import type { Deliver } from "./gen/interop/v1/client_pb";

interface Me {
  user: string;
  name: string;
  provider: string;
}
interface Provider {
  id: string;
  display_name: string;
  privacy_policy_url: string;
  encryption: string;
}
interface MediaRef {
  id: string;
  contentType: string;
  filename: string;
}
interface Msg {
  key: string; // store key: the server id, or our client id for what we sent
  messageId: string;
  peer: string;
  from: string;
  outgoing: boolean;
  at: number;
  text?: string;
  media?: MediaRef;
  e2ee: boolean;
  problem?: string;
  status?: "sending" | "sent" | "delivered" | "read" | "failed";
  failure?: string;
  deliveryTag?: string;
  read?: boolean;
  reactions?: Record<string, string>;
  edited?: boolean;
  deleted?: boolean;
  replyTo?: string;
  /** Written by this app, not sent by anyone (a security code change). */
  notice?: boolean;
  /** A notice's heading (none: "Security code changed."). */
  noticeLabel?: string;
}
type ChatState = "request" | "accepted" | "declined" | "blocked";
interface ChatMeta {
  peer: string;
  name?: string;
  state: ChatState;
  providerName: string;
  privacyPolicyUrl: string;
  group?: boolean;
}
interface Chat extends ChatMeta {
  /** Who a request in this chat is from (the group's admin, for a group). */
  sender?: string;
  messages: Msg[];
  typingUntil?: number;
}
interface Consent {
  optedIn: boolean;
  allowed: string[];
  inbox: Inbox;
  blocked: string[];
}

let me: Me;
let store: Store;
let e2ee: E2ee;
let conn: Connection;
let providers: Provider[] = [];
let consent: Consent = { optedIn: false, allowed: [], inbox: Inbox.THIRD_PARTY, blocked: [] };
const chats = new Map<string, Chat>();
let view: { kind: "settings" } | { kind: "chat"; peer: string } | { kind: "new" } | { kind: "group" } | { kind: "empty" } = { kind: "settings" };
// What the composer does with its text: a new message, a reply, an edit.
let composing: { peer: string; replyTo?: Msg; editing?: Msg } | null = null;
let connected = false;
// When this user last told each chat they are typing (0: not since their last message).
const lastTypingSent = new Map<string, number>();
let keysPublished = false;

// ---- small DOM helpers ----

type Child = Node | string | null | undefined | false;
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | boolean | ((e: Event) => void)> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v as EventListener);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false) el.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

function say(text: string) {
  const s = document.getElementById("status")!;
  s.textContent = text;
  window.setTimeout(() => {
    if (s.textContent === text) s.textContent = "";
  }, 6000);
}

async function api(path: string, init?: RequestInit): Promise<Response> {
  return fetch(path, { credentials: "same-origin", ...init });
}

/** A link only if it is a web address (a provider's registry entry is not trusted to be one). */
function webUrl(u: string): string {
  return /^https?:\/\//i.test(u) ? u : "";
}

function providerOf(address: string): string {
  return address.split(":")[0] ?? "";
}

function providerName(id: string): string {
  if (id === me.provider) return "Home Messenger";
  return providers.find((p) => p.id === id)?.display_name ?? id;
}

function rejectText(f: ServerFrame): string {
  if (f.frame.case === "rejected") {
    const r = f.frame.value;
    return `${RejectCode[r.code] ?? r.code}${r.detail ? `: ${r.detail}` : ""}`;
  }
  return "no answer";
}

/**
 * An element id for `value` (an address, a message id): the same value
 * always gives the same id, so focus comes back to it after a redraw, and
 * different values give different ids (every character outside
 * [A-Za-z0-9-] is written as `_<hex code point>_`).
 */
function domId(prefix: string, value: string): string {
  return `${prefix}-${value.replace(/[^A-Za-z0-9-]/gu, (ch) => `_${ch.codePointAt(0)!.toString(16)}_`)}`;
}

function randomId(prefix: string): string {
  return prefix + Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- sign-in ----

async function signInScreen() {
  const main = document.getElementById("main")!;
  document.getElementById("account")!.replaceChildren();
  const res = await api("/api/demo-users");
  const { users } = (await res.json()) as { users: { address: string; name: string }[] };
  const select = h("select", { id: "signin-user", name: "user" }, ...users.map((u) => h("option", { value: u.address }, `${u.name} (${u.address})`)));
  const form = h(
    "form",
    {
      class: "card",
      "aria-labelledby": "signin-title",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const r = await api("/api/session", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ user: select.value }),
        });
        if (r.ok) location.reload();
        else say("Sign-in failed");
      },
    },
    h("h2", { id: "signin-title" }, "Sign in"),
    h("p", {}, "This demo has no passwords: choose one of the home messenger's demo users."),
    h("label", { for: "signin-user" }, "Demo user"),
    " ",
    select,
    " ",
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  main.replaceChildren(h("section", { class: "view" }, form));
}

// ---- storage ----

async function saveMsg(m: Msg) {
  await store.put("messages", `${m.peer}|${m.key}`, m);
}
async function saveChat(c: Chat) {
  const meta: ChatMeta = { peer: c.peer, name: c.name, state: c.state, providerName: c.providerName, privacyPolicyUrl: c.privacyPolicyUrl, group: c.group };
  await store.put("kv", `chat:${c.peer}`, meta);
}

function chat(peer: string): Chat {
  let c = chats.get(peer);
  if (!c) {
    const p = providers.find((x) => x.id === providerOf(peer));
    c = { peer, state: "accepted", providerName: providerName(providerOf(peer)), privacyPolicyUrl: p?.privacy_policy_url ?? "", messages: [] };
    chats.set(peer, c);
  }
  return c;
}

async function loadChats() {
  const metas = (await store.all<ChatMeta | unknown>("kv")).filter((v): v is ChatMeta => typeof v === "object" && v !== null && "peer" in v && "state" in v);
  for (const m of metas) chats.set(m.peer, { ...m, messages: [] });
  for (const m of await store.all<Msg>("messages")) chat(m.peer).messages.push(m);
  for (const c of chats.values()) c.messages.sort((a, b) => a.at - b.at);
}

// ---- receiving ----

let deliveries: Promise<void> = Promise.resolve();
function onDeliver(d: Deliver) {
  // One at a time, in order: Olm sessions move with each message.
  deliveries = deliveries.then(() => handleDeliver(d)).catch((e) => console.error("delivery", e));
}

function findSent(messageId: string): Msg | undefined {
  for (const c of chats.values()) for (const m of c.messages) if (m.outgoing && m.messageId === messageId) return m;
  return undefined;
}

function findMsg(peer: string, messageId: string): Msg | undefined {
  return chats.get(peer)?.messages.find((m) => m.messageId === messageId);
}

async function handleDeliver(d: Deliver) {
  const e = d.envelope;
  const tag = d.deliveryTag;
  const ack = () => (tag ? conn.post({ case: "ack", value: { deliveryTags: [tag] } }) : undefined);
  if (!e) return void (await ack());
  const content = e.content;
  if (content.case === "receipt") {
    const r = content.value;
    const m = findSent(r.messageId);
    if (m) {
      const order = ["sending", "sent", "delivered", "read"];
      if (r.status === ReceiptStatus.FAILED) {
        m.status = "failed";
        m.failure = `${RejectCode[r.code] ?? r.code}${r.detail ? `: ${r.detail}` : ""}`;
      } else if (r.status === ReceiptStatus.DELIVERED && order.indexOf(m.status ?? "sent") < 2) m.status = "delivered";
      else if (r.status === ReceiptStatus.READ) m.status = "read";
      await saveMsg(m);
      render();
    }
    return void (await ack());
  }
  const peer = e.groupId || (e.from === me.user ? e.to : e.from);
  const c = chat(peer);
  if (content.case === "typing") {
    c.typingUntil = content.value.active ? Date.now() + 6000 : 0;
    render();
    window.setTimeout(render, 6100);
    return;
  }
  if (e.senderInfo && e.from !== me.user) {
    c.providerName = e.senderInfo.displayName || c.providerName;
    c.privacyPolicyUrl = e.senderInfo.privacyPolicyUrl || c.privacyPolicyUrl;
  }
  if (e.groupId) {
    c.group = true;
    if (!c.name) void groupInfo(c);
  }
  if (content.case === "reaction" || content.case === "edit" || content.case === "delete") {
    const target = findMsg(peer, content.value.targetMessageId);
    if (target) {
      if (content.case === "reaction") {
        target.reactions = { ...(target.reactions ?? {}) };
        if (content.value.emoji) target.reactions[e.from] = content.value.emoji;
        else delete target.reactions[e.from];
      } else if (content.case === "delete") {
        target.deleted = true;
        target.text = undefined;
        target.media = undefined;
      } else if (content.value.text) {
        target.text = content.value.text.body;
        target.edited = true;
      } else if (content.value.ciphertext && content.value.ciphertext.scheme === SCHEME) {
        try {
          target.text = await e2ee.decryptFrom(conn, e.from, content.value.ciphertext.payload);
          target.edited = true;
        } catch {
          target.problem = "An edit of this message could not be decrypted.";
        }
      }
      await saveMsg(target);
      render();
    } else await targetMissing(c, d, e);
    return void (await ack());
  }
  if (c.messages.some((m) => m.messageId === e.messageId)) return void (await ack());
  const m: Msg = {
    key: e.messageId,
    messageId: e.messageId,
    peer,
    from: e.from,
    outgoing: e.from === me.user,
    at: Number(e.acceptedAtMs || e.sentAtMs) || Date.now(),
    e2ee: e.encryption === Encryption.E2EE,
    deliveryTag: tag ? tag.toString() : undefined,
    replyTo: e.inReplyTo || undefined,
  };
  await describe(e, m);
  place(c, d, e);
  c.messages.push(m);
  await saveMsg(m);
  await saveChat(c);
  await ack();
  if (view.kind === "chat" && view.peer === peer) markRead(c);
  render();
}

/** A delivery from the requests inbox makes its chat a request; one from the other inboxes, an accepted chat. */
function place(c: Chat, d: Deliver, e: Envelope) {
  if (d.inbox === Inbox.REQUESTS && c.state !== "blocked" && c.state !== "declined") {
    c.state = "request";
    c.sender = e.from;
  }
  else if ((d.inbox === Inbox.THIRD_PARTY || d.inbox === Inbox.COMBINED) && c.state === "request") c.state = "accepted";
}

/**
 * Says in the chat that someone reacted to, edited or deleted a message
 * this browser does not have (sent before it was set up, or to another
 * device), rather than dropping it unseen.
 */
async function targetMissing(c: Chat, d: Deliver, e: Envelope) {
  const key = `missing-${e.messageId}`;
  if (c.messages.some((m) => m.key === key)) return; // delivered again
  const content = e.content;
  const did =
    content.case === "reaction"
      ? content.value.emoji
        ? `reacted ${content.value.emoji} to`
        : "took back a reaction to"
      : content.case === "edit"
        ? "edited"
        : "deleted";
  const m: Msg = {
    key,
    messageId: "",
    peer: c.peer,
    from: e.from,
    outgoing: false,
    at: Number(e.acceptedAtMs || e.sentAtMs) || Date.now(),
    e2ee: e.encryption === Encryption.E2EE,
    read: true,
    notice: true,
    noticeLabel: "Message not on this device.",
    text: `${e.from === me.user ? "You" : e.from} ${did} a message not on this device.`,
  };
  place(c, d, e);
  c.messages.push(m);
  await saveMsg(m);
  await saveChat(c);
  render();
}

async function describe(e: Envelope, m: Msg) {
  const content = e.content;
  switch (content.case) {
    case "text":
      m.text = content.value.body;
      break;
    case "ciphertext": {
      const c = content.value;
      if (c.missingForDevice) m.problem = "This message was not encrypted for this browser; ask the sender to send it again.";
      else if (c.scheme !== SCHEME) m.problem = `Encrypted with ${c.scheme}, which this app cannot read.`;
      else {
        try {
          m.text = await e2ee.decryptFrom(conn, e.from, c.payload);
        } catch (err) {
          m.problem = `This message could not be decrypted (${(err as Error).message}).`;
        }
      }
      break;
    }
    case "media": {
      const x = content.value;
      m.media = { id: x.mediaId, contentType: x.contentType, filename: x.filename || x.mediaId };
      break;
    }
    case "call":
      m.text = "📞 tried to call you. Calls don't work between different messaging apps yet.";
      break;
    case "groupChange": {
      const g = content.value;
      const c = chat(m.peer);
      c.group = true;
      if (g.name || g.renamed) c.name = g.name;
      const what = g.created ? `created the group “${g.name}”` : g.renamed ? `renamed the group to “${g.name}”` : "changed the group";
      m.text = `${e.from} ${what}. Members: ${g.members.join(", ")}`;
      break;
    }
    case "keyNotice":
      m.text = "🔒 Their security code changed.";
      break;
    default:
      m.text = "(a message this app cannot show)";
  }
}

function markRead(c: Chat) {
  if (c.state !== "accepted") return; // reading a request tells the sender nothing
  const unread = c.messages.filter((m) => !m.outgoing && !m.read && m.deliveryTag);
  if (!unread.length) return;
  for (const m of unread) m.read = true;
  void conn.post({ case: "markRead", value: { deliveryTags: unread.map((m) => BigInt(m.deliveryTag!)), user: me.user } });
  for (const m of unread) void saveMsg(m);
}

// ---- consent and keys ----

async function loadConsent() {
  const a = await conn.request({ case: "getConsent", value: { user: me.user } });
  if (a.frame.case === "consentState") {
    const s = a.frame.value;
    consent = { optedIn: s.optedIn, allowed: [...s.allowedProviders], inbox: s.inbox || Inbox.THIRD_PARTY, blocked: [...s.blocked] };
  }
}

async function setConsent(optedIn: boolean, allowed: string[], inbox: Inbox) {
  const a = await conn.request({ case: "setConsent", value: { user: me.user, optedIn, allowedProviders: allowed, inbox } });
  if (a.frame.case !== "consentUpdated") {
    say(`Not saved: ${rejectText(a)}`);
    return;
  }
  const s = a.frame.value;
  consent = { ...consent, optedIn: s.optedIn, allowed: [...s.allowedProviders], inbox: s.inbox || Inbox.THIRD_PARTY };
  say(optedIn ? `Saved: people on ${allowed.map(providerName).join(", ") || "no other app"} can reach you.` : "Turned off: nobody on another messaging app can reach you now.");
  if (optedIn) await publishKeys();
  render();
}

async function publishKeys() {
  try {
    await e2ee.ensurePublished(conn);
    keysPublished = true;
  } catch (err) {
    say(`Your encryption keys could not be published: ${(err as Error).message}`);
  }
  render();
}

// ---- actions ----

async function respond(peer: string, action: RequestAction) {
  // A group's request is answered about its sender.
  const sender = chats.get(peer)?.group ? (chats.get(peer)?.sender ?? peer) : peer;
  const a = await conn.request({ case: "respondToRequest", value: { user: me.user, sender, action } });
  if (a.frame.case !== "requestResponded") {
    say(`Not done: ${rejectText(a)}`);
    return;
  }
  const c = chat(peer);
  const names: Record<number, [ChatState, string]> = {
    [RequestAction.ACCEPT]: ["accepted", `Accepted: you can now chat with ${peer}.`],
    [RequestAction.DECLINE]: ["declined", `Declined: ${peer} cannot reach you.`],
    [RequestAction.BLOCK]: ["blocked", `Blocked: ${peer} cannot reach you.`],
    [RequestAction.REPORT]: ["blocked", `Reported and blocked ${peer}.`],
    [RequestAction.RESET]: ["accepted", `Unblocked ${peer}.`],
  };
  const [state, text] = names[action] ?? ["accepted", "Done."];
  c.state = state;
  await saveChat(c);
  if (state === "accepted") markRead(c);
  say(text);
  render();
}

/**
 * Sends an envelope; a refusal that says "try again" (UNAVAILABLE: nothing
 * was stored; RATE_LIMITED) is sent again, unchanged (the same client
 * message id), after the time the gateway asks, up to three tries.
 */
async function send(envelope: EnvelopeInit): Promise<ServerFrame> {
  for (let attempt = 1; ; attempt++) {
    const a = await conn.request({ case: "send", value: { envelope } });
    const again = a.frame.case === "rejected" && (a.frame.value.code === RejectCode.UNAVAILABLE || a.frame.value.code === RejectCode.RATE_LIMITED);
    if (!again || attempt === 3) return a;
    const wait = a.frame.case === "rejected" ? Math.max(500, a.frame.value.retryAfterMs) : 500;
    await new Promise((r) => setTimeout(r, Math.min(wait, 5000)));
  }
}

/** Tells the user, in the chat, that a contact's security code changed. */
async function securityChanged(peer: string) {
  const c = chat(peer);
  const m: Msg = {
    key: randomId("notice-"),
    messageId: "",
    peer,
    from: "",
    outgoing: false,
    at: Date.now(),
    e2ee: true,
    read: true,
    notice: true,
    text: `Your security code with ${peer} changed: they have a new or another device (or reinstalled the app). If you did not expect this, check with them some other way.`,
  };
  c.messages.push(m);
  await saveMsg(m);
  render();
}

async function sendText(peer: string, text: string, replyTo?: Msg) {
  const c = chat(peer);
  // The message ends this burst of typing: the next keystroke says so again.
  lastTypingSent.delete(peer);
  const clientMessageId = randomId("web-");
  let devices: { deviceId: string; payload: Uint8Array }[] = [];
  if (!c.group) {
    try {
      devices = await e2ee.encryptFor(conn, peer, text);
    } catch (err) {
      say(`Not sent: cannot encrypt for ${peer} (${(err as Error).message})`);
      return;
    }
  }
  const m: Msg = { key: clientMessageId, messageId: "", peer, from: me.user, outgoing: true, at: Date.now(), text, e2ee: devices.length > 0, status: "sending", replyTo: replyTo?.messageId };
  c.messages.push(m);
  if (c.state === "request") c.state = "accepted";
  await saveChat(c);
  await saveMsg(m);
  render();
  const envelope = {
    clientMessageId,
    from: me.user,
    to: c.group ? "" : peer,
    groupId: c.group ? peer : "",
    sentAtMs: BigInt(m.at),
    inReplyTo: replyTo?.messageId ?? "",
    ...(devices.length
      ? { encryption: Encryption.E2EE, content: { case: "ciphertext" as const, value: { scheme: SCHEME, devices } } }
      : { encryption: Encryption.TRANSPORT_ONLY, content: { case: "text" as const, value: { body: text } } }),
  };
  const a = await send(envelope);
  if (a.frame.case === "accepted") {
    m.messageId = a.frame.value.messageId;
    if (m.status === "sending") m.status = "sent";
  } else {
    m.status = "failed";
    m.failure = rejectText(a);
    say(`Not sent: ${m.failure}`);
  }
  await saveMsg(m);
  render();
}

/**
 * Replaces the text of a message this user sent: end to end encrypted,
 * for every device of the recipient, if the message was.
 */
async function editText(m: Msg, text: string) {
  const c = chat(m.peer);
  let devices: { deviceId: string; payload: Uint8Array }[] = [];
  if (m.e2ee) {
    try {
      devices = await e2ee.encryptFor(conn, m.peer, text);
    } catch (err) {
      return say(`Not edited: cannot encrypt for ${m.peer} (${(err as Error).message})`);
    }
    // What was sent end to end is never replaced by server-visible text.
    if (!devices.length) return say(`Not edited: ${m.peer} has no devices to encrypt for.`);
  }
  const a = await send({
    clientMessageId: randomId("web-"),
    from: me.user,
    to: c.group ? "" : m.peer,
    groupId: c.group ? m.peer : "",
    sentAtMs: BigInt(Date.now()),
    ...(devices.length
      ? { encryption: Encryption.E2EE, content: { case: "edit" as const, value: { targetMessageId: m.messageId, ciphertext: { scheme: SCHEME, devices } } } }
      : { encryption: Encryption.TRANSPORT_ONLY, content: { case: "edit" as const, value: { targetMessageId: m.messageId, text: { body: text } } } }),
  });
  if (a.frame.case !== "accepted") return say(`Not edited: ${rejectText(a)}`);
  m.text = text;
  m.edited = true;
  await saveMsg(m);
  render();
}

/** Deletes a message this user sent, for everyone. */
async function deleteMessage(m: Msg) {
  const c = chat(m.peer);
  const a = await send({
    clientMessageId: randomId("web-"),
    from: me.user,
    to: c.group ? "" : m.peer,
    groupId: c.group ? m.peer : "",
    encryption: Encryption.TRANSPORT_ONLY,
    sentAtMs: BigInt(Date.now()),
    content: { case: "delete", value: { targetMessageId: m.messageId } },
  });
  if (a.frame.case !== "accepted") return say(`Not deleted: ${rejectText(a)}`);
  m.deleted = true;
  m.text = undefined;
  await saveMsg(m);
  say("Deleted for everyone.");
  render();
}

/** A group's name, asked of the gateway (members only may). */
const askedGroups = new Set<string>();
async function groupInfo(c: Chat) {
  if (askedGroups.has(c.peer)) return;
  askedGroups.add(c.peer);
  const a = await conn.request({ case: "getGroup", value: { groupId: c.peer, user: me.user } });
  if (a.frame.case !== "groupUpdated") return;
  c.name = a.frame.value.name || c.name;
  await saveChat(c);
  render();
}

async function createGroup(name: string, members: string[]) {
  const a = await conn.request({ case: "createGroup", value: { creator: me.user, members, name } });
  if (a.frame.case !== "groupUpdated") return say(`No group: ${rejectText(a)}`);
  const g = a.frame.value;
  const c = chat(g.groupId);
  c.group = true;
  c.name = g.name;
  c.state = "accepted";
  await saveChat(c);
  say(`Group “${g.name}” created with ${g.members.filter((x) => x !== me.user).join(", ")}.`);
  open({ kind: "chat", peer: g.groupId });
}

async function sendFile(peer: string, file: File) {
  const c = chat(peer);
  const type = file.type || "application/octet-stream";
  const up = await api("/api/media", { method: "POST", headers: { "Content-Type": type, "X-Interop-Encryption": "transport-only" }, body: file });
  if (!up.ok) {
    const err = await up.json().catch(() => ({ code: up.status }));
    say(`Not sent: the upload was refused (${err.code}${err.detail ? `: ${err.detail}` : ""})`);
    return;
  }
  const u = (await up.json()) as { media_id: string; size: number; content_type: string };
  const clientMessageId = randomId("web-");
  const m: Msg = { key: clientMessageId, messageId: "", peer, from: me.user, outgoing: true, at: Date.now(), media: { id: "", contentType: type, filename: file.name }, e2ee: false, status: "sending" };
  c.messages.push(m);
  await saveMsg(m);
  render();
  const a = await send({
    clientMessageId,
    from: me.user,
    to: c.group ? "" : peer,
    groupId: c.group ? peer : "",
    encryption: Encryption.TRANSPORT_ONLY,
    sentAtMs: BigInt(m.at),
    content: { case: "media", value: { mediaId: u.media_id, contentType: u.content_type, size: BigInt(u.size), filename: file.name } },
  });
  if (a.frame.case === "accepted") {
    m.messageId = a.frame.value.messageId;
    m.status = "sent";
  } else {
    m.status = "failed";
    m.failure = rejectText(a);
  }
  await saveMsg(m);
  render();
}

async function react(m: Msg, emoji: string) {
  const c = chat(m.peer);
  const mine = m.reactions?.[me.user] === emoji ? "" : emoji;
  const a = await send({
    clientMessageId: randomId("web-"),
    from: me.user,
    to: c.group ? "" : m.peer,
    groupId: c.group ? m.peer : "",
    encryption: Encryption.TRANSPORT_ONLY,
    sentAtMs: BigInt(Date.now()),
    content: { case: "reaction", value: { targetMessageId: m.messageId, emoji: mine } },
  });
  if (a.frame.case !== "accepted") return say(`Reaction not sent: ${rejectText(a)}`);
  m.reactions = { ...(m.reactions ?? {}) };
  if (mine) m.reactions[me.user] = mine;
  else delete m.reactions[me.user];
  await saveMsg(m);
  render();
}

function sendTyping(peer: string) {
  const c = chat(peer);
  if (c.state !== "accepted" || Date.now() - (lastTypingSent.get(peer) ?? 0) < 3000) return;
  lastTypingSent.set(peer, Date.now());
  void conn.request({
    case: "send",
    value: {
      envelope: {
        clientMessageId: randomId("web-t-"),
        from: me.user,
        to: c.group ? "" : peer,
        groupId: c.group ? peer : "",
        encryption: Encryption.TRANSPORT_ONLY,
        sentAtMs: BigInt(Date.now()),
        content: { case: "typing", value: { active: true } },
      },
    },
  });
}

// ---- rendering ----

function isThirdParty(c: Chat): boolean {
  return !c.group && providerOf(c.peer) !== me.provider;
}

function open(next: typeof view) {
  view = next;
  if (next.kind === "chat") markRead(chat(next.peer));
  render();
  document.getElementById("view-title")?.focus();
}

function preview(m: Msg): string {
  if (m.deleted) return "Deleted message";
  if (m.problem) return "Encrypted message";
  if (m.media) {
    const t = m.media.contentType;
    return t.startsWith("image/") ? "Picture" : t.startsWith("audio/") ? "Voice message" : t.startsWith("video/") ? "Video" : "File";
  }
  return (m.text ?? "").slice(0, 40);
}

function chatButton(c: Chat) {
  const unread = c.messages.filter((m) => !m.outgoing && !m.read).length;
  const last = c.messages[c.messages.length - 1];
  const current = view.kind === "chat" && view.peer === c.peer;
  const stateText = c.state === "blocked" ? " (blocked)" : c.state === "declined" ? " (declined)" : "";
  return h(
    "li",
    {},
    h(
      "button",
      { type: "button", id: domId("chat", c.peer), "aria-current": current ? "true" : "false", onclick: () => open({ kind: "chat", peer: c.peer }) },
      `${c.name || c.peer}${stateText}`,
      h("span", { class: "provider-tag" }, `${c.group ? "Group" : c.providerName}${last ? ` · ${preview(last)}` : ""}`),
      unread && c.state !== "request" ? h("span", { class: "badge", "aria-label": `${unread} unread` }, String(unread)) : null,
    ),
  );
}

function renderNav(): HTMLElement {
  const all = [...chats.values()].sort((a, b) => (b.messages.at(-1)?.at ?? 0) - (a.messages.at(-1)?.at ?? 0));
  const requests = all.filter((c) => c.state === "request");
  const combined = consent.inbox === Inbox.COMBINED;
  const mainChats = all.filter((c) => c.state !== "request" && (!isThirdParty(c) || combined));
  const others = all.filter((c) => c.state !== "request" && isThirdParty(c) && !combined);
  const list = (id: string, title: string, items: Chat[], empty: string) => [
    h("h2", { id: `${id}-title` }, title),
    items.length ? h("ul", { id, "aria-labelledby": `${id}-title` }, ...items.map(chatButton)) : h("p", { class: "meta", id }, empty),
  ];
  return h(
    "nav",
    { class: "lists", "aria-label": "Chats" },
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", id: "open-settings", onclick: () => open({ kind: "settings" }) }, "Other messaging apps: settings"),
      h("button", { type: "button", id: "new-chat", onclick: () => open({ kind: "new" }) }, "New chat"),
      h("button", { type: "button", id: "new-group", onclick: () => open({ kind: "group" }) }, "New group"),
    ),
    h("p", { class: "meta", id: "interop-state" }, consent.optedIn ? `Other apps: on (${consent.allowed.map(providerName).join(", ") || "none chosen"})` : "Other apps: off"),
    ...list("requests", `Message requests${requests.length ? ` (${requests.length})` : ""}`, requests, "No message requests."),
    ...list("chats", combined ? "All chats" : "Chats", mainChats, "No chats yet."),
    ...(combined ? [] : list("third-party", "Chats with other messaging apps", others, "No chats with other apps yet.")),
  );
}

function renderSettings(): HTMLElement {
  const on = h("input", { type: "checkbox", id: "interop-on", checked: consent.optedIn });
  const choices = providers.map((p) =>
    h(
      "div",
      { class: "provider-choice" },
      h("input", { type: "checkbox", id: `allow-${p.id}`, name: "allow", value: p.id, checked: consent.allowed.includes(p.id) }),
      h("label", { for: `allow-${p.id}` }, p.display_name),
      h("span", { class: "meta" }, p.encryption === "e2ee" ? "end-to-end encrypted app" : "not end-to-end encrypted"),
      webUrl(p.privacy_policy_url) ? h("a", { href: webUrl(p.privacy_policy_url), target: "_blank", rel: "noopener noreferrer" }, `${p.display_name} privacy policy`) : null,
    ),
  );
  const radio = (id: string, value: Inbox, text: string) =>
    h("div", {}, h("input", { type: "radio", id, name: "inbox", value: String(value), checked: consent.inbox === value }), " ", h("label", { for: id }, text));
  const form = h(
    "form",
    {
      class: "card",
      id: "consent-form",
      "aria-labelledby": "view-title",
      onsubmit: (e: Event) => {
        e.preventDefault();
        const allowed = providers.filter((p) => (document.getElementById(`allow-${p.id}`) as HTMLInputElement).checked).map((p) => p.id);
        const combined = (document.getElementById("inbox-combined") as HTMLInputElement).checked;
        void setConsent(on.checked, allowed, combined ? Inbox.COMBINED : Inbox.THIRD_PARTY);
      },
    },
    h("p", {}, "Chats with people on other messaging apps are off until you turn them on. You choose which apps may reach you; the first message from each person arrives as a message request."),
    h("div", {}, on, " ", h("label", { for: "interop-on" }, "Let people on other messaging apps reach me")),
    h("fieldset", {}, h("legend", {}, "Apps that may reach me"), ...(choices.length ? choices : [h("p", {}, "The gateway's registry lists no other apps.")])),
    h("fieldset", {}, h("legend", {}, "Where their chats go"), radio("inbox-separate", Inbox.THIRD_PARTY, "In their own section"), radio("inbox-combined", Inbox.COMBINED, "With my other chats")),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary", id: "save-consent" }, "Save"),
      consent.optedIn ? h("button", { type: "button", class: "danger", id: "opt-out", onclick: () => void setConsent(false, [], consent.inbox) }, "Turn off now") : null,
    ),
  );
  const ids = e2ee.identity();
  const keys = h(
    "div",
    { class: "card", id: "keys" },
    h("h3", {}, "End-to-end encryption"),
    h("p", {}, "This browser made its own encryption keys and keeps them; only the public keys go to the key directory. The home messenger's servers never see your messages to other apps in plain text."),
    h("p", { id: "keys-state" }, keysPublished ? "This browser's public keys are published." : "Your public keys are published when you turn chats with other apps on."),
    h("p", { class: "meta" }, `Device ${e2ee.deviceId} · fingerprint ${fingerprint(ids.ed25519)}`),
  );
  const blocked = consent.blocked.length
    ? h(
        "div",
        { class: "card" },
        h("h3", {}, "Blocked"),
        h("ul", {}, ...consent.blocked.map((b) => h("li", {}, `${b} `, h("button", { type: "button", onclick: () => void respond(b, RequestAction.RESET).then(loadConsent).then(render) }, `Unblock ${b}`)))),
      )
    : null;
  return h("section", { class: "view", "aria-labelledby": "view-title" }, h("h2", { id: "view-title", tabindex: "-1" }, "Settings for other messaging apps"), form, keys, blocked);
}

function renderNew(): HTMLElement {
  const input = h("input", { type: "text", id: "new-peer", placeholder: "signal:alice or home:+49…", required: true, autocomplete: "off" });
  return h(
    "section",
    { class: "view", "aria-labelledby": "view-title" },
    h("h2", { id: "view-title", tabindex: "-1" }, "New chat"),
    h(
      "form",
      {
        class: "card",
        onsubmit: (e: Event) => {
          e.preventDefault();
          const peer = input.value.trim();
          if (!/^[a-z][a-z0-9-]{0,31}:\S+$/.test(peer)) return say("Write an address like signal:alice");
          const c = chat(peer);
          void saveChat(c);
          open({ kind: "chat", peer });
        },
      },
      h("label", { for: "new-peer" }, "Address"),
      " ",
      input,
      " ",
      h("button", { type: "submit", class: "primary" }, "Start chat"),
    ),
  );
}

function renderNewGroup(): HTMLElement {
  const name = h("input", { type: "text", id: "group-name", autocomplete: "off", required: true });
  const members = h("input", { type: "text", id: "group-members", autocomplete: "off", required: true, placeholder: "signal:alice, home:+49…" });
  return h(
    "section",
    { class: "view", "aria-labelledby": "view-title" },
    h("h2", { id: "view-title", tabindex: "-1" }, "New group"),
    h(
      "form",
      {
        class: "card",
        onsubmit: (e: Event) => {
          e.preventDefault();
          const list = members.value.split(",").map((x) => x.trim()).filter(Boolean);
          void createGroup(name.value.trim(), list);
        },
      },
      h("p", {}, "Members may be on other messaging apps that allow it. Group messages in this app are not end-to-end encrypted."),
      h("div", {}, h("label", { for: "group-name" }, "Group name"), " ", name),
      h("div", {}, h("label", { for: "group-members" }, "Members (addresses, separated by commas)"), " ", members),
      h("button", { type: "submit", class: "primary" }, "Create group"),
    ),
  );
}

function encryptionLabel(c: Chat): HTMLElement {
  // The chat's label follows its messages (text and calls), newest first;
  // media sent without end-to-end encryption is marked on its own.
  const last = c.messages.filter((m) => !m.notice && !m.problem && !m.media && !m.deleted).at(-1);
  const e2eeChat = last ? last.e2ee : providers.find((p) => p.id === providerOf(c.peer))?.encryption === "e2ee" || !isThirdParty(c);
  const plainMedia = c.messages.some((m) => m.media && !m.e2ee);
  return h(
    "div",
    { id: "encryption-label" },
    e2eeChat
      ? h("p", { class: "label-e2ee" }, "End-to-end encrypted (Olm): only you and them can read these messages.")
      : h("p", { class: "label-plain" }, "Not end-to-end encrypted: the other app and the gateway can read these messages."),
    plainMedia ? h("p", { class: "label-plain" }, "Pictures, voice notes, videos and files in this chat are not end-to-end encrypted.") : null,
  );
}

function warnings(c: Chat): HTMLElement | null {
  if (!isThirdParty(c)) return null;
  const app = c.providerName || providerOf(c.peer);
  return h(
    "section",
    { class: "warnings", id: "warnings", "aria-label": "About chats with other apps" },
    h("strong", {}, `${c.peer} uses ${app}, a different messaging app.`),
    h(
      "ul",
      {},
      h("li", {}, `Chats with other apps differ from Home Messenger chats: how messages are protected depends on ${app} too, and some features do not work.`),
      h("li", {}, "Watch out for spam and scams: never share codes or passwords, and be careful with requests for money or links."),
      h(
        "li",
        {},
        `${app} handles your messages under its own privacy policy: `,
        webUrl(c.privacyPolicyUrl) ? h("a", { href: webUrl(c.privacyPolicyUrl), target: "_blank", rel: "noopener noreferrer", id: "privacy-link" }, `${app} privacy policy`) : "not given",
        ".",
      ),
    ),
  );
}

// Media elements outlive a re-render: a picture is not fetched again and a
// voice note keeps playing when a receipt or a typing indicator comes.
const mediaElements = new Map<string, HTMLElement>();
function mediaView(m: Msg): HTMLElement {
  const cached = mediaElements.get(`${m.peer}|${m.key}`);
  if (cached) return cached;
  const el = makeMedia(m);
  mediaElements.set(`${m.peer}|${m.key}`, el);
  return el;
}

function makeMedia(m: Msg): HTMLElement {
  const x = m.media!;
  const src = `/api/media/${encodeURIComponent(x.id)}`;
  const who = m.outgoing ? "you" : m.from;
  if (x.contentType.startsWith("image/")) return h("div", { class: "msg-media" }, h("img", { src, alt: `Image from ${who}: ${x.filename}` }));
  if (x.contentType.startsWith("audio/")) return h("div", { class: "msg-media" }, h("audio", { src, controls: true, preload: "metadata", "aria-label": `Voice message from ${who}` }));
  if (x.contentType.startsWith("video/")) return h("div", { class: "msg-media" }, h("video", { src, controls: true, preload: "metadata", "aria-label": `Video from ${who}` }));
  return h("div", { class: "msg-media" }, h("a", { href: src, download: x.filename }, `Download ${x.filename}`));
}

function messageView(c: Chat, m: Msg): HTMLElement {
  if (m.notice) return h("li", { class: "notice" }, h("strong", {}, `${m.noticeLabel ?? "Security code changed."} `), m.text ?? "");
  const body: Child[] = [];
  if (m.replyTo) {
    const target = c.messages.find((x) => x.messageId === m.replyTo);
    body.push(h("div", { class: "quote" }, `↩ ${target ? `${target.outgoing ? "you" : target.from}: ${preview(target)}` : "a message"}`));
  }
  if (m.deleted) body.push(h("em", {}, "This message was deleted."));
  else if (m.problem) body.push(h("em", {}, m.problem));
  else if (m.media) body.push(m.outgoing ? h("span", { class: "text" }, `You sent ${m.media.filename}`) : mediaView(m));
  if (!m.deleted && m.text !== undefined && !m.media) body.push(h("span", { class: "text" }, m.text));
  const status = m.outgoing ? (m.status === "failed" ? `Not delivered (${m.failure ?? "failed"})` : ({ sending: "Sending…", sent: "Sent", delivered: "Delivered", read: "Read" } as Record<string, string>)[m.status ?? "sent"]) : "";
  const reactions = Object.entries(m.reactions ?? {});
  const time = new Date(m.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return h(
    "li",
    { class: m.outgoing ? "out" : "in", "data-message-id": m.messageId },
    c.group && !m.outgoing ? h("div", { class: "meta" }, m.from) : null,
    ...body,
    reactions.length ? h("div", { class: "reactions" }, reactions.map(([who, e]) => `${e} ${who === me.user ? "you" : who}`).join(", ")) : null,
    h(
      "div",
      { class: "meta" },
      `${time} · ${m.e2ee ? "end-to-end encrypted" : "not end-to-end encrypted"}${m.edited ? " · edited" : ""}${status ? ` · ${status}` : ""}`,
      ...messageActions(c, m, time),
    ),
  );
}

function messageActions(c: Chat, m: Msg, time: string): HTMLElement[] {
  if (!m.messageId || c.state !== "accepted" || m.deleted || m.problem) return [];
  const who = m.outgoing ? "your message" : `the message from ${m.from}`;
  const button = (cls: string, label: string, text: string, f: () => void, pressed?: boolean) =>
    h("button", { type: "button", id: domId(cls, m.messageId), class: `react ${cls}`, "aria-label": `${label} ${who} at ${time}`, ...(pressed === undefined ? {} : { "aria-pressed": String(pressed) }), onclick: f }, text);
  const out = [
    button("reply", "Reply to", "Reply", () => {
      composing = { peer: c.peer, replyTo: m };
      render();
      document.getElementById("composer-text")?.focus();
    }),
  ];
  if (!m.outgoing) out.push(button("like", "Like", "Like", () => void react(m, "👍"), m.reactions?.[me.user] === "👍"));
  if (m.outgoing && !m.media && m.text !== undefined)
    out.push(
      button("edit", "Edit", "Edit", () => {
        composing = { peer: c.peer, editing: m };
        render();
        const input = document.getElementById("composer-text") as HTMLInputElement | null;
        if (input) {
          input.value = m.text ?? "";
          input.focus();
        }
      }),
    );
  if (m.outgoing) out.push(button("delete", "Delete", "Delete", () => void deleteMessage(m)));
  return out;
}

function renderChat(peer: string): HTMLElement {
  const c = chat(peer);
  const title = c.state === "request" ? `Message request from ${c.name || peer}` : c.name || peer;
  const parts: Child[] = [
    h("h2", { id: "view-title", tabindex: "-1" }, title),
    h("p", { class: "meta" }, c.group ? "A group; members may be on other messaging apps" : `On ${c.providerName}${isThirdParty(c) ? ", a different messaging app" : ""}`),
    c.group ? h("p", { class: "label-plain", id: "encryption-label" }, "Not end-to-end encrypted: group messages in this app are readable by the apps of its members and the gateway.") : encryptionLabel(c),
    warnings(c),
  ];
  if (c.state === "request") {
    parts.push(
      h("p", {}, `${peer} is not in your contacts. They will not know you have seen this unless you accept.`),
      h(
        "div",
        { class: "actions", role: "group", "aria-label": "Answer the request" },
        h("button", { type: "button", class: "primary", id: "accept", onclick: () => void respond(peer, RequestAction.ACCEPT) }, "Accept"),
        h("button", { type: "button", id: "decline", onclick: () => void respond(peer, RequestAction.DECLINE) }, "Decline"),
        h("button", { type: "button", class: "danger", id: "block", onclick: () => void respond(peer, RequestAction.BLOCK) }, "Block"),
        h("button", { type: "button", class: "danger", id: "report", onclick: () => void respond(peer, RequestAction.REPORT) }, "Report as spam"),
      ),
    );
  }
  parts.push(h("ol", { class: "messages", "aria-label": "Messages", id: "messages" }, ...c.messages.map((m) => messageView(c, m))));
  parts.push(h("p", { class: "typing", "aria-live": "polite" }, (c.typingUntil ?? 0) > Date.now() ? `${peer} is typing…` : ""));
  if (c.state === "accepted") {
    const input = h("input", { type: "text", id: "composer-text", autocomplete: "off", oninput: () => sendTyping(peer) });
    const file = h("input", {
      type: "file",
      id: "composer-file",
      onchange: () => {
        const f = file.files?.[0];
        if (f) void sendFile(peer, f);
        file.value = "";
      },
    });
    parts.push(
      h(
        "form",
        {
          class: "composer",
          id: "composer",
          onsubmit: (e: Event) => {
            e.preventDefault();
            const text = input.value.trim();
            if (!text) return;
            input.value = "";
            const now = composing?.peer === peer ? composing : null;
            composing = null;
            if (now?.editing) void editText(now.editing, text);
            else void sendText(peer, text, now?.replyTo);
          },
        },
        composing?.peer === peer && (composing.replyTo || composing.editing)
          ? h(
              "div",
              { class: "field file", id: "composing" },
              composing.editing ? `Editing your message` : `Replying to ${composing.replyTo!.outgoing ? "your message" : composing.replyTo!.from}: ${preview(composing.replyTo!)}`,
              h("button", { type: "button", id: "cancel-composing", onclick: () => ((composing = null), render()) }, composing.editing ? "Cancel edit" : "Cancel reply"),
            )
          : null,
        h("div", { class: "field" }, h("label", { for: "composer-text" }, `Message to ${c.name || peer}`), input),
        h("button", { type: "submit", class: "primary", id: "send" }, composing?.peer === peer && composing.editing ? "Save edit" : "Send"),
        h("div", { class: "field file" }, h("label", { for: "composer-file" }, "Send a picture, voice note, video or file (not end-to-end encrypted)"), file),
      ),
    );
    if (isThirdParty(c))
      parts.push(
        h(
          "div",
          { class: "actions", role: "group", "aria-label": "Chat options" },
          h("button", { type: "button", class: "danger", id: "block", onclick: () => void respond(peer, RequestAction.BLOCK) }, `Block ${peer}`),
          h("button", { type: "button", class: "danger", id: "report", onclick: () => void respond(peer, RequestAction.REPORT) }, `Report ${peer} as spam`),
        ),
      );
  } else if (c.state !== "request") {
    parts.push(
      h("p", { id: "blocked-note" }, c.state === "blocked" ? `You blocked ${peer}: they cannot reach you.` : `You declined ${peer}: they cannot reach you.`),
      h("button", { type: "button", id: "unblock", onclick: () => void respond(peer, RequestAction.RESET) }, c.state === "blocked" ? `Unblock ${peer}` : `Allow ${peer} to ask again`),
    );
  }
  return h("section", { class: "view", "aria-labelledby": "view-title" }, ...parts);
}

function render() {
  if (!me) return;
  const main = document.getElementById("main")!;
  const focused = document.activeElement?.id;
  const draft = (document.getElementById("composer-text") as HTMLInputElement | null)?.value;
  let v: HTMLElement;
  switch (view.kind) {
    case "settings":
      v = renderSettings();
      break;
    case "new":
      v = renderNew();
      break;
    case "group":
      v = renderNewGroup();
      break;
    case "chat":
      v = renderChat(view.peer);
      break;
    default:
      v = h("section", { class: "view" }, h("h2", { id: "view-title", tabindex: "-1" }, "Choose a chat"));
  }
  main.replaceChildren(h("div", { class: "layout" }, renderNav(), v));
  const composer = document.getElementById("composer-text") as HTMLInputElement | null;
  if (composer && draft) composer.value = draft;
  const refocused = focused ? document.getElementById(focused) : null;
  refocused?.focus();
  // The newest message shows, unless that would scroll a focused message's button out of sight.
  const list = document.getElementById("messages");
  if (list && !(refocused && list.contains(refocused))) list.lastElementChild?.scrollIntoView({ block: "end" });
  document.body.dataset.connected = String(connected);
}

// ---- start ----

async function start() {
  const res = await api("/api/session");
  if (res.status === 401) return signInScreen();
  me = (await res.json()) as Me;
  document.getElementById("account")!.replaceChildren(
    h("span", { id: "whoami" }, `${me.name} (${me.user})`),
    h(
      "button",
      {
        type: "button",
        id: "sign-out",
        onclick: async () => {
          await api("/api/session", { method: "DELETE" });
          location.reload();
        },
      },
      "Sign out",
    ),
  );
  const p = await api("/api/providers");
  if (p.ok) providers = ((await p.json()) as { providers: Provider[] }).providers;
  else say("The list of other messaging apps is not available now.");
  store = await openStore(me.user);
  e2ee = await E2ee.open(store, me.user);
  e2ee.onSecurityChange = (peer) => void securityChanged(peer);
  await loadChats();
  conn = new Connection(e2ee.deviceId, onDeliver, (up) => {
    connected = up;
    document.body.dataset.connected = String(up);
    if (!up) say("Reconnecting…");
  });
  await loadConsent();
  keysPublished = await e2ee.published();
  if (consent.optedIn && !keysPublished) await publishKeys();
  view = consent.optedIn ? { kind: "empty" } : { kind: "settings" };
  render();
  document.body.dataset.ready = "true";
}

void start();
