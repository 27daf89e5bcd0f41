// End-to-end encryption that ends in this browser: Olm (libolm, compiled
// to WebAssembly, from the maintained @towns-protocol/olm package), wire
// compatible with the vodozemac Olm of the `interop` CLI
// (shared/client/src/olm.rs): the same key directory entries, and a
// `Ciphertext{scheme: "olm.v1"}` whose payload is one byte of Olm message
// type (0 pre-key, 1 normal) and the message. Keys are made here and kept
// in IndexedDB; only public keys and ciphertext leave the browser.

import Olm from "@towns-protocol/olm";
import type { Account, OlmImpl, Session } from "@towns-protocol/olm";
import type { Connection } from "./conn";
import type { Store } from "./db";

export const SCHEME = "olm.v1";
const FIRST_ONE_TIME_KEYS = 20;
// Below this many unclaimed one-time keys the directory calls a device low.
const LOW_ONE_TIME_KEYS = 10;

let olm: OlmImpl | null = null;
async function lib(): Promise<OlmImpl> {
  olm ??= await Olm.initAsync({ locateFile: () => "/assets/olm.wasm" });
  return olm;
}

export function b64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  // Olm's base64 is unpadded.
  return btoa(s).replace(/=+$/, "");
}

export function unb64(text: string): Uint8Array {
  const s = atob(text.replace(/=+$/, "") + "===".slice((text.replace(/=+$/, "").length + 3) % 4));
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function randomKey(): string {
  return b64(crypto.getRandomValues(new Uint8Array(32)));
}

/** A short, readable fingerprint of an Ed25519 key, for the settings screen. */
export function fingerprint(key: string): string {
  return (key.slice(0, 24).match(/.{1,4}/g) ?? []).join(" ");
}

export class E2ee {
  private queue: Promise<unknown> = Promise.resolve();
  /**
   * Called when a contact's devices show an identity key this browser has
   * not seen for them before, after it had seen others: their security
   * code changed (a new device, or a reinstall, or someone else's key).
   */
  onSecurityChange: (peer: string) => void = () => undefined;

  private constructor(
    private olm: OlmImpl,
    private store: Store,
    private user: string,
    readonly deviceId: string,
    private account: Account,
    private pickleKey: string,
  ) {}

  /** Opens (or creates, with a new Olm account) this browser's device. */
  static async open(store: Store, user: string): Promise<E2ee> {
    const o = await lib();
    let pickleKey = await store.get<string>("kv", "olm:pickle-key");
    if (!pickleKey) {
      pickleKey = randomKey();
      await store.put("kv", "olm:pickle-key", pickleKey);
    }
    let deviceId = await store.get<string>("kv", "olm:device-id");
    if (!deviceId) {
      deviceId = "web-" + Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
      await store.put("kv", "olm:device-id", deviceId);
    }
    const account = new o.Account();
    const pickled = await store.get<string>("kv", "olm:account");
    if (pickled) account.unpickle(pickleKey, pickled);
    else {
      account.create();
      await store.put("kv", "olm:account", account.pickle(pickleKey));
    }
    return new E2ee(o, store, user, deviceId, account, pickleKey);
  }

  /** Runs one Olm operation at a time: sessions and the account change. */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const next = this.queue.then(f, f);
    this.queue = next.catch(() => undefined);
    return next;
  }

  identity(): { curve25519: string; ed25519: string } {
    return JSON.parse(this.account.identity_keys());
  }

  private async saveAccount() {
    await this.store.put("kv", "olm:account", this.account.pickle(this.pickleKey));
  }

  async published(): Promise<boolean> {
    return (await this.store.get<boolean>("kv", "olm:published")) === true;
  }

  /**
   * Publishes this device's keys to the key directory if it never did:
   * the Curve25519 identity key, the Ed25519 signing key, the fallback key
   * as the signed prekey (signed by the Ed25519 key, over its 32 bytes) and
   * as the last-resort prekey, and one-time keys numbered above any before.
   */
  ensurePublished(conn: Connection): Promise<void> {
    return this.serial(async () => {
      if (await this.published()) return;
      await this.publish(conn, FIRST_ONE_TIME_KEYS);
      await this.store.put("kv", "olm:published", true);
    });
  }

  /**
   * Publishes more one-time keys when the directory holds fewer than
   * `LOW_ONE_TIME_KEYS` for this device (each new session from another
   * device claims one; without them, senders use the fallback key).
   */
  topUp(conn: Connection): Promise<void> {
    return this.serial(async () => {
      if (!(await this.published())) return;
      const list = await conn.request({ case: "listDevices", value: { requester: this.user, user: this.user } });
      if (list.frame.case !== "deviceList") return;
      const mine = list.frame.value.devices.find((d) => d.deviceId === this.deviceId);
      if (mine && mine.oneTimePrekeys < LOW_ONE_TIME_KEYS) await this.publish(conn, FIRST_ONE_TIME_KEYS);
    });
  }

  /** Publishes the device's keys with `count` new one-time keys. */
  private async publish(conn: Connection, count: number) {
    const ids = this.identity();
    this.account.generate_one_time_keys(count);
    const first = (json: string) => Object.values(JSON.parse(json).curve25519 ?? {})[0] as string | undefined;
    // The fallback key stays until it is replaced: publish the same one.
    let fallback = first(this.account.unpublished_fallback_key()) ?? first(this.account.fallback_key());
    if (!fallback) {
      this.account.generate_fallback_key();
      fallback = first(this.account.unpublished_fallback_key())!;
    }
    const fallbackBytes = unb64(fallback);
    // libolm wipes the buffers it is handed: give it copies.
    const signature = unb64(this.account.sign(fallbackBytes.slice()));
    const oneTime = Object.values(JSON.parse(this.account.one_time_keys()).curve25519) as string[];
    let nextId = (await this.store.get<number>("kv", "olm:next-key-id")) ?? 1;
    const oneTimePrekeys = oneTime.map((k) => ({ algorithm: "curve25519", keyId: nextId++, key: unb64(k) }));
    // Saved before publishing: an id is never handed out twice.
    await this.store.put("kv", "olm:next-key-id", nextId);
    const answer = await conn.request({
      case: "publishKeys",
      value: {
        user: this.user,
        device: {
          deviceId: this.deviceId,
          identityKey: { algorithm: "curve25519", key: unb64(ids.curve25519) },
          signingKey: { algorithm: "ed25519", key: unb64(ids.ed25519) },
          signedPrekey: { algorithm: "curve25519", key: fallbackBytes, signature },
          lastResortPrekey: { algorithm: "curve25519", key: fallbackBytes },
        },
        oneTimePrekeys,
      },
    });
    if (answer.frame.case !== "keysPublished") {
      throw new Error(answer.frame.case === "rejected" ? answer.frame.value.detail : "no answer");
    }
    this.account.mark_keys_as_published();
    await this.saveAccount();
  }

  /** Remembers `peer`'s identity keys; true when one is new after others. */
  private async noteIdentities(peer: string, identities: string[]): Promise<boolean> {
    const key = `olm:known:${peer}`;
    const known = (await this.store.get<string[]>("kv", key)) ?? [];
    const fresh = identities.filter((i) => !known.includes(i));
    if (!fresh.length) return false;
    await this.store.put("kv", key, [...known, ...fresh]);
    return known.length > 0;
  }

  private sessionKey(peer: string) {
    return `olm:sessions:${peer}`;
  }

  private async sessions(peer: string): Promise<Record<string, string>> {
    return (await this.store.get<Record<string, string>>("kv", this.sessionKey(peer))) ?? {};
  }

  private async saveSession(peer: string, identity: string, s: Session) {
    const all = await this.sessions(peer);
    all[identity] = s.pickle(this.pickleKey);
    await this.store.put("kv", this.sessionKey(peer), all);
  }

  private load(pickle: string): Session {
    const s = new this.olm.Session();
    s.unpickle(this.pickleKey, pickle);
    return s;
  }

  /**
   * Encrypts `text` for every device of `to`: over the session each
   * already has, or a new one from a freshly fetched bundle whose signed
   * prekey's signature is checked first. Empty when `to` has no devices.
   */
  encryptFor(conn: Connection, to: string, text: string): Promise<{ deviceId: string; payload: Uint8Array }[]> {
    return this.serial(async () => {
      const list = await conn.request({ case: "listDevices", value: { requester: this.user, user: to } });
      if (list.frame.case !== "deviceList") {
        if (list.frame.case === "rejected") return [];
        throw new Error("no device list");
      }
      const identities = list.frame.value.devices.flatMap((d) => (d.identityKey ? [b64(d.identityKey.key)] : []));
      if (await this.noteIdentities(to, identities)) this.onSecurityChange(to);
      const out: { deviceId: string; payload: Uint8Array }[] = [];
      const missing: string[] = [];
      const existing = await this.sessions(to);
      for (const d of list.frame.value.devices) {
        if (!d.identityKey) continue;
        const identity = b64(d.identityKey.key);
        const pickle = existing[identity];
        if (!pickle) {
          missing.push(d.deviceId);
          continue;
        }
        const s = this.load(pickle);
        try {
          out.push({ deviceId: d.deviceId, payload: encode(s.encrypt(text)) });
          await this.saveSession(to, identity, s);
        } finally {
          s.free();
        }
      }
      if (missing.length) {
        const answer = await conn.request({ case: "fetchBundles", value: { requester: this.user, user: to, deviceIds: missing } });
        if (answer.frame.case !== "bundles") throw new Error("the key directory did not give their keys");
        const util = new this.olm.Utility();
        try {
          for (const b of answer.frame.value.bundles) {
            const d = b.device;
            if (!d?.identityKey || !d.signingKey || !d.signedPrekey) continue;
            // Throws when the signed prekey is not signed by the device.
            util.ed25519_verify(b64(d.signingKey.key), d.signedPrekey.key.slice(), b64(d.signedPrekey.signature));
            const prekey = b.oneTimePrekey?.key ?? d.signedPrekey.key;
            const s = new this.olm.Session();
            try {
              s.create_outbound(this.account, b64(d.identityKey.key), b64(prekey));
              out.push({ deviceId: d.deviceId, payload: encode(s.encrypt(text)) });
              await this.saveSession(to, b64(d.identityKey.key), s);
            } finally {
              s.free();
            }
          }
        } finally {
          util.free();
        }
      }
      return out;
    });
  }

  /**
   * Decrypts what `from` sent this device. A normal message is tried with
   * each session with the sender; a pre-key message that none takes starts
   * a session, only if its identity key is one of the sender's devices in
   * the key directory.
   */
  decryptFrom(conn: Connection, from: string, payload: Uint8Array): Promise<string> {
    return this.serial(async () => {
      if (payload.length < 2) throw new Error("no ciphertext for this device");
      const type = payload[0];
      const body = b64(payload.subarray(1));
      for (const [identity, pickle] of Object.entries(await this.sessions(from))) {
        const s = this.load(pickle);
        try {
          const text = s.decrypt(type, body);
          await this.saveSession(from, identity, s);
          return text;
        } catch {
          // Not this session.
        } finally {
          s.free();
        }
      }
      if (type !== 0) throw new Error("no session with the sender decrypts this message");
      const list = await conn.request({ case: "listDevices", value: { requester: this.user, user: from } });
      if (list.frame.case !== "deviceList") throw new Error("the sender's devices are unknown");
      for (const d of list.frame.value.devices) {
        if (!d.identityKey) continue;
        const identity = b64(d.identityKey.key);
        const s = new this.olm.Session();
        try {
          s.create_inbound_from(this.account, identity, body);
        } catch {
          s.free();
          continue;
        }
        try {
          const text = s.decrypt(type, body);
          this.account.remove_one_time_keys(s);
          await this.saveAccount();
          await this.saveSession(from, identity, s);
          if (await this.noteIdentities(from, [identity])) this.onSecurityChange(from);
          // A one-time key was claimed: publish more when few are left
          // (after this operation, in the same queue).
          void this.topUp(conn).catch(() => undefined);
          return text;
        } finally {
          s.free();
        }
      }
      throw new Error("the sender's identity key is not one of their devices in the key directory");
    });
  }
}

function encode(m: { type: 0 | 1; body: string }): Uint8Array {
  const body = unb64(m.body);
  const out = new Uint8Array(body.length + 1);
  out[0] = m.type;
  out.set(body, 1);
  return out;
}
