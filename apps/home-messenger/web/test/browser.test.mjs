// The web app in a real browser (Debian's chromium, headless, driven by
// playwright-core) against a real gateway, with the `interop` CLI as a
// Signal user. Started by apps/home-messenger/tests/browser.rs, which runs
// the gateway and the adapter and passes:
//   HOME_MESSENGER_URL     the adapter
//   INTEROP_CLI            the `interop` binary
//   INTEROP_CLIENT_CONFIG  the CLI's config (URLs, tokens; keys beside it)
//   SCREENSHOT_DIR         where screenshots go (default: test-results/)

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const APP = process.env.HOME_MESSENGER_URL;
const CLI = process.env.INTEROP_CLI;
const BOB = "home:+4915112345678";
const ALICE = "signal:alice";
const SHOTS = process.env.SCREENSHOT_DIR ?? new URL("../test-results/", import.meta.url).pathname;
const SIGNAL_POLICY = process.env.SIGNAL_PRIVACY_URL ?? "https://signal.example/privacy";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/** Runs the CLI once; resolves with its exit code and output (JSON lines). */
function cliOnce(args) {
  return new Promise((resolve, reject) => {
    const p = spawn(CLI, ["--json", ...args], { env: process.env });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("error", reject);
    p.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Runs the CLI. A refusal that says "try again" (UNAVAILABLE: the gateway
 * stored nothing; RATE_LIMITED) is retried, as docs/protocol.md tells
 * clients to, up to 3 times; each retry is logged.
 */
async function cli(...args) {
  for (let attempt = 1; ; attempt++) {
    const r = await cliOnce(args);
    const retry = r.code === 2 && /"code":"(UNAVAILABLE|RATE_LIMITED)"/.test(r.stdout);
    if (!retry || attempt === 3) return r;
    console.log(`# interop ${args.join(" ")}: ${r.stdout.trim()}; retrying`);
    await new Promise((res) => setTimeout(res, 1000));
  }
}

/**
 * `interop listen` until `done(lines)` holds for the lines it printed;
 * `lines` resolves with them. `opened` resolves once its session is open.
 * The CLI acks each message right after printing it, and a message whose
 * ack is lost comes again (and its DELIVERED receipt is not sent): so the
 * process is stopped only a moment after the last line it printed.
 */
function listen(user, done, timeoutS = 20, device = "cli") {
  const p = spawn(CLI, ["--json", "listen", "--as", user, "--device", device, "--timeout", String(timeoutS)], { env: process.env });
  let ready;
  const opened = new Promise((r) => (ready = r));
  p.stderr.on("data", (d) => /listening as/.test(String(d)) && ready());
  const lines = new Promise((resolve, reject) => {
    let buf = "";
    const seen = [];
    p.stdout.on("data", (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          seen.push(JSON.parse(line));
        } catch {
          continue;
        }
        if (done(seen)) {
          setTimeout(() => p.kill(), 500);
          resolve(seen);
        }
      }
    });
    p.on("close", () => reject(new Error(`listen ended first; saw ${JSON.stringify(seen)}`)));
  });
  const closed = new Promise((r) => p.on("close", r));
  return { opened, lines: lines.then(async (l) => (await closed, l)) };
}

/** The first line `interop listen` prints that satisfies `want`. */
async function listenFor(user, want, timeoutS = 20, device = "cli") {
  const seen = await listen(user, (lines) => lines.some(want), timeoutS, device).lines;
  return seen.find(want);
}

function crc32(bytes) {
  let c = ~0;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

/** A small PNG: a 64x48 gradient. */
function png() {
  const w = 64, h = 48;
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    raw[y * (w * 3 + 1)] = 0;
    for (let x = 0; x < w; x++) raw.set([x * 4, y * 5, 160], y * (w * 3 + 1) + 1 + x * 3);
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", ihdr), chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

/** A one-second voice note: a 440 Hz tone, 16-bit mono WAV. */
function wav() {
  const rate = 16000, n = rate;
  const b = Buffer.alloc(44 + n * 2);
  b.write("RIFF", 0);
  b.writeUInt32LE(36 + n * 2, 4);
  b.write("WAVEfmt ", 8);
  b.writeUInt32LE(16, 16);
  b.writeUInt16LE(1, 20);
  b.writeUInt16LE(1, 22);
  b.writeUInt32LE(rate, 24);
  b.writeUInt32LE(rate * 2, 28);
  b.writeUInt16LE(2, 32);
  b.writeUInt16LE(16, 34);
  b.write("data", 36);
  b.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) b.writeInt16LE(Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / rate)), 44 + i * 2);
  return b;
}

/** axe-core on the page as it is: no violations at all. */
async function accessible(page, what) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  const problems = result.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join("; ")})`);
  assert.deepEqual(problems, [], `${what}: accessibility violations`);
}

test("the home messenger in a real browser", { timeout: 150_000 }, async (t) => {
  assert.ok(APP && CLI, "run through apps/home-messenger/tests/browser.rs (HOME_MESSENGER_URL, INTEROP_CLI)");
  mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--autoplay-policy=no-user-gesture-required"] });
  t.after(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1200, height: 860 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const shot = async (name) => {
    // Without the passing status note, which would cover the view.
    await page.evaluate(() => (document.getElementById("status").textContent = ""));
    await page.screenshot({ path: join(SHOTS, name), fullPage: true });
  };

  await t.test("sign in as a demo user", async () => {
    await page.goto(APP);
    await page.getByLabel("Demo user").waitFor();
    await accessible(page, "sign-in");
    await page.getByLabel("Demo user").selectOption(BOB);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.waitForSelector("body[data-ready=true]");
    await page.getByText(`Bob (${BOB})`).waitFor();
    const cookies = await context.cookies();
    assert.ok(cookies.some((c) => c.name === "hm_session" && c.httpOnly), "an HttpOnly session cookie");
  });

  await t.test("interop is off until the user opts in and picks providers", async () => {
    await page.getByText("Other apps: off").waitFor();
    const signal = page.getByLabel("Signal", { exact: true });
    assert.equal(await signal.isChecked(), false);
    const policy = page.getByRole("link", { name: "Signal privacy policy" });
    assert.equal(await policy.getAttribute("href"), SIGNAL_POLICY);
    await accessible(page, "settings");
    await page.getByLabel("Let people on other messaging apps reach me").check();
    await signal.check();
    await page.getByRole("button", { name: "Save" }).click();
    await page.getByText("Other apps: on (Signal)").waitFor();
    await page.getByText("This browser's public keys are published.").waitFor();
    await shot("settings.png");
  });

  await t.test("the New chat and New group views are accessible", async () => {
    await page.getByRole("button", { name: "New chat", exact: true }).click();
    await page.getByRole("heading", { name: "New chat", exact: true }).waitFor();
    await accessible(page, "new chat");
    await page.getByRole("button", { name: "New group", exact: true }).click();
    await page.getByRole("heading", { name: "New group", exact: true }).waitFor();
    await accessible(page, "new group");
  });

  await t.test("a CLI user's end-to-end-encrypted first message is a request, decrypted in the browser", async () => {
    let r = await cli("opt-in", "--as", ALICE, "--allow", "home");
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    r = await cli("send", "--e2ee", "--as", ALICE, "--to", BOB, "--text", "hello from signal");
    assert.equal(r.code, 0, `send --e2ee: ${r.stdout} ${r.stderr}`);
    const request = page.locator("#requests").getByRole("button", { name: new RegExp(ALICE) });
    await request.waitFor();
    await request.click();
    await page.getByRole("heading", { name: `Message request from ${ALICE}` }).waitFor();
    await page.locator("#messages").getByText("hello from signal").waitFor();
    assert.match(await page.locator("#encryption-label").innerText(), /End-to-end encrypted/);
    const warnings = await page.locator("#warnings").innerText();
    assert.match(warnings, /a different messaging app/);
    assert.match(warnings, /spam and scams/);
    assert.equal(await page.locator("#privacy-link").getAttribute("href"), SIGNAL_POLICY);
    await accessible(page, "request");
    await shot("request.png");
  });

  await t.test("accepting it opens the chat; replies go end to end both ways, by keyboard", async () => {
    await page.getByRole("button", { name: "Accept" }).click();
    await page.getByRole("heading", { name: ALICE, exact: true }).waitFor();
    // The chat now sits with the other apps' chats.
    await page.locator("#third-party").getByRole("button", { name: new RegExp(ALICE) }).waitFor();
    // Keyboard only: Tab to the message field, type, Enter.
    for (let i = 0; i < 60; i++) {
      if ((await page.evaluate(() => document.activeElement?.id)) === "composer-text") break;
      await page.keyboard.press("Tab");
    }
    assert.equal(await page.evaluate(() => document.activeElement?.id), "composer-text", "the message field is reachable by Tab");
    const heard = listenFor(ALICE, (v) => v.text === "hi alice, from the browser");
    await page.keyboard.type("hi alice, from the browser");
    await page.keyboard.press("Enter");
    const line = await heard;
    assert.equal(line.e2ee_scheme, "olm.v1");
    assert.equal(line.encryption, "E2EE");
    // Alice's device acked it: the browser shows the receipt.
    await page.locator("#messages li.out").getByText(/Delivered|Read/).waitFor();
    const r = await cli("send", "--e2ee", "--as", ALICE, "--to", BOB, "--text", "second from signal");
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    await page.locator("#messages").getByText("second from signal").waitFor();
    await accessible(page, "chat");
  });

  await t.test("pictures are shown, voice notes and videos play, files download", async () => {
    const dir = join(tmpdir(), `home-messenger-${process.pid}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "photo.png"), png());
    writeFileSync(join(dir, "voice.wav"), wav());
    let r = await cli("send", "--as", ALICE, "--to", BOB, "--file", join(dir, "photo.png"));
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    const img = page.locator(`#messages img[alt="Image from ${ALICE}: photo.jpg"]`);
    await img.waitFor();
    await page.waitForFunction((sel) => document.querySelector(sel)?.naturalWidth > 0, `#messages img[alt="Image from ${ALICE}: photo.jpg"]`);
    assert.equal(await img.evaluate((i) => i.naturalWidth), 64);
    r = await cli("send", "--as", ALICE, "--to", BOB, "--file", join(dir, "voice.wav"));
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    const audio = page.getByLabel(`Voice message from ${ALICE}`);
    await audio.waitFor();
    const played = await audio.evaluate(async (a) => {
      await a.play();
      await new Promise((res) => setTimeout(res, 300));
      return { duration: a.duration, time: a.currentTime };
    });
    assert.ok(Number.isFinite(played.duration) && played.duration > 0.5 && played.duration < 2, `duration ${played.duration}`);
    assert.ok(played.time > 0, "playback advanced");
    // A one-second clip made with ffmpeg (scripts/test installs it for the
    // gateway's media stage); the gateway converts it to H.264/AAC MP4.
    const made = await new Promise((res) =>
      spawn("ffmpeg", ["-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=duration=1:size=160x120:rate=10", "-pix_fmt", "yuv420p", join(dir, "clip.webm")]).on("close", res),
    );
    assert.equal(made, 0, "ffmpeg made the clip");
    r = await cli("send", "--as", ALICE, "--to", BOB, "--file", join(dir, "clip.webm"));
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    const video = page.getByLabel(`Video from ${ALICE}`);
    await video.waitFor();
    const watched = await video.evaluate(async (v) => {
      v.muted = true;
      await v.play();
      await new Promise((res) => setTimeout(res, 300));
      return { duration: v.duration, time: v.currentTime, width: v.videoWidth };
    });
    assert.ok(Number.isFinite(watched.duration) && watched.duration > 0.5 && watched.time > 0 && watched.width === 160, JSON.stringify(watched));
    writeFileSync(join(dir, "notes.txt"), "the packing list\n");
    r = await cli("send", "--as", ALICE, "--to", BOB, "--file", join(dir, "notes.txt"));
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    const link = page.getByRole("link", { name: "Download notes.txt" });
    await link.waitFor();
    const href = await link.getAttribute("href");
    assert.equal(await page.evaluate(async (u) => (await fetch(u)).text(), href), "the packing list\n");
    await shot("chat.png");
  });

  await t.test("keyboard focus stays on a message's button when a message arrives, and Enter acts", async () => {
    const reply = page.locator("#messages li.in", { hasText: "hello from signal" }).getByRole("button", { name: /^Reply to the message from signal:alice/ });
    const id = await reply.getAttribute("id");
    assert.match(id ?? "", /^reply-/, "the Reply button has an id");
    // Keyboard only, from the chat's heading: Tab to the Reply button.
    await page.locator("#view-title").focus();
    for (let i = 0; i < 60; i++) {
      if ((await page.evaluate(() => document.activeElement?.id)) === id) break;
      await page.keyboard.press("Tab");
    }
    assert.equal(await page.evaluate(() => document.activeElement?.id), id, "the Reply button is reachable by Tab");
    const r = await cli("send", "--e2ee", "--as", ALICE, "--to", BOB, "--text", "third from signal");
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    await page.locator("#messages").getByText("third from signal").waitFor();
    assert.equal(await page.evaluate(() => document.activeElement?.id), id, "focus stays on the Reply button when the page redraws");
    await page.keyboard.press("Enter");
    await page.locator("#composing", { hasText: "Replying to signal:alice: hello from signal" }).waitFor();
    assert.equal(await page.evaluate(() => document.activeElement?.id), "composer-text", "Enter on Reply moves to the message field");
    await page.getByRole("button", { name: "Cancel reply" }).click();
    await page.locator("#composing").waitFor({ state: "detached" });
  });

  await t.test("the Signal user's typing, reaction and edit show in the chat, and a reaction to a message not on this device says so", async () => {
    const second = page.locator("#messages li.in", { hasText: "second from signal" });
    const secondId = await second.getAttribute("data-message-id");
    const typing = await cli("send", "--as", ALICE, "--to", BOB, "--typing", "true");
    assert.equal(typing.code, 0, `${typing.stdout} ${typing.stderr}`);
    await page.locator("p.typing", { hasText: `${ALICE} is typing…` }).waitFor();
    const like = await cli("send", "--as", ALICE, "--to", BOB, "--react-to", secondId, "--emoji", "🎉");
    assert.equal(like.code, 0, `${like.stdout} ${like.stderr}`);
    await second.locator(".reactions", { hasText: `🎉 ${ALICE}` }).waitFor();
    // Alice's own message, edited end to end (Olm, for this browser).
    const first = page.locator("#messages li.in", { hasText: "hello from signal" });
    const firstId = await first.getAttribute("data-message-id");
    const edit = await cli("send", "--e2ee", "--as", ALICE, "--to", BOB, "--edit", firstId, "--text", "hello again from signal");
    assert.equal(edit.code, 0, `${edit.stdout} ${edit.stderr}`);
    await page.locator(`#messages li[data-message-id="${firstId}"]`, { hasText: "hello again from signal" }).waitFor();
    const elsewhere = await cli("send", "--as", ALICE, "--to", BOB, "--react-to", "0192aaaa-0000-7000-8000-000000000000", "--emoji", "👍");
    assert.equal(elsewhere.code, 0, `${elsewhere.stdout} ${elsewhere.stderr}`);
    await page.locator("#messages li.notice", { hasText: `${ALICE} reacted 👍 to a message not on this device.` }).waitFor();
  });

  await t.test("typing, replies, end-to-end-encrypted edits, likes, deletes and read receipts reach the Signal user", async () => {
    const second = page.locator("#messages li.in", { hasText: "second from signal" });
    const secondId = await second.getAttribute("data-message-id");
    const mine = page.locator("#messages li.out", { hasText: "hi alice, from the browser" });
    const mineId = await mine.getAttribute("data-message-id");
    // The reply's id, once the gateway accepted it.
    let replyId = "";
    const want = {
      typing: (v) => v.typing?.active === true,
      reply: (v) => v.text === "a reply, end to end" && v.in_reply_to === secondId && v.e2ee_scheme === "olm.v1",
      // An edit of an encrypted message comes encrypted (no server-visible
      // text); `interop listen` decrypts it.
      edited: (v) => replyId !== "" && v.edit?.target_message_id === replyId && v.encryption === "E2EE" && typeof v.edit.ciphertext_b64 === "string" && v.edit.text === "an edited reply, end to end" && v.e2ee_scheme === "olm.v1",
      like: (v) => v.reaction?.target_message_id === secondId && v.reaction.emoji === "👍",
      deleted: (v) => v.delete?.target_message_id === mineId,
      read: (v) => v.receipt?.message_id === secondId && v.receipt.status === "READ",
    };
    const alice = listen(ALICE, (lines) => Object.values(want).every((w) => lines.some(w)));
    await alice.opened;
    await second.getByRole("button", { name: /^Reply to the message from signal:alice/ }).click();
    await page.getByText("Replying to signal:alice: second from signal").waitFor();
    await page.keyboard.type("a reply, end to end");
    await page.keyboard.press("Enter");
    await page.locator("#messages li.out", { hasText: "a reply, end to end" }).getByText("↩ signal:alice: second from signal").waitFor();
    await page.locator('#messages li.out:not([data-message-id=""])', { hasText: "a reply, end to end" }).waitFor();
    replyId = await page.locator("#messages li.out", { hasText: "a reply, end to end" }).getAttribute("data-message-id");
    const reply = page.locator(`#messages li[data-message-id="${replyId}"]`);
    await reply.getByRole("button", { name: /^Edit your message/ }).click();
    await page.locator("#composing", { hasText: "Editing your message" }).waitFor();
    const field = page.getByLabel(`Message to ${ALICE}`);
    assert.equal(await field.inputValue(), "a reply, end to end", "the message field holds the text to edit");
    await field.fill("an edited reply, end to end");
    await page.keyboard.press("Enter");
    await reply.getByText("an edited reply, end to end").waitFor();
    assert.match(await reply.innerText(), /· edited/);
    await second.getByRole("button", { name: /^Like the message from signal:alice/ }).click();
    await page.locator("#messages li.in", { hasText: "second from signal" }).getByText("👍 you").waitFor();
    await mine.getByRole("button", { name: /^Delete your message/ }).click();
    await page.getByText("This message was deleted.").waitFor();
    const lines = await alice.lines;
    for (const [what, w] of Object.entries(want)) assert.ok(lines.some(w), `${what} did not reach signal:alice`);
  });

  await t.test("a new device of the contact changes the security code, and gets its own ciphertext", async () => {
    const r = await cli("keys", "publish", "--as", ALICE, "--device", "tablet");
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    const phone = listenFor(ALICE, (v) => v.text === "to both your devices" && v.e2ee_scheme === "olm.v1");
    await page.getByLabel(`Message to ${ALICE}`).fill("to both your devices");
    await page.getByRole("button", { name: "Send", exact: true }).click();
    await page.getByText(`Your security code with ${ALICE} changed`).waitFor();
    await phone;
    // The new device decrypts its own copy.
    await listenFor(ALICE, (v) => v.text === "to both your devices" && v.e2ee_scheme === "olm.v1", 20, "tablet");
    await accessible(page, "chat with a security notice");
  });

  await t.test("a group with a Signal user: its notice, its messages, a reply to the group", async () => {
    let r = await cli("group", "create", "--creator", ALICE, "--member", BOB, "--name", "Ski trip");
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    const groupId = /"group_id":"([^"]+)"/.exec(r.stdout)?.[1];
    assert.ok(groupId, r.stdout);
    r = await cli("send", "--as", ALICE, "--group", groupId, "--text", "see you at the lift");
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    const group = page.getByRole("button", { name: /^Ski trip/ });
    await group.waitFor();
    await group.click();
    await page.getByRole("heading", { name: "Ski trip" }).waitFor();
    await page.locator("#messages").getByText("see you at the lift").waitFor();
    await page.locator("#messages").getByText(/created the group “Ski trip”/).waitFor();
    assert.match(await page.locator("#encryption-label").innerText(), /Not end-to-end encrypted/);
    const heard = listenFor(ALICE, (v) => v.group_id === groupId && v.text === "count me in");
    await page.getByLabel("Message to Ski trip").fill("count me in");
    await page.getByRole("button", { name: "Send", exact: true }).click();
    await heard;
    await accessible(page, "group");
  });

  await t.test("inboxes: other apps' chats apart, or combined by choice; a plain-text request says so", async () => {
    const r = await cli("send", "--as", "signal:carol", "--to", BOB, "--text", "hi bob, it's carol");
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    const request = page.locator("#requests").getByRole("button", { name: /signal:carol/ });
    await request.waitFor();
    await page.locator("#third-party").getByRole("button", { name: new RegExp(ALICE) }).waitFor();
    await request.click();
    await page.getByRole("heading", { name: "Message request from signal:carol" }).waitFor();
    assert.match(await page.locator("#encryption-label").innerText(), /Not end-to-end encrypted/);
    await shot("inbox.png");
    await page.getByRole("button", { name: "Other messaging apps: settings" }).click();
    await page.getByLabel("With my other chats").check();
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator("#chats").getByRole("button", { name: new RegExp(ALICE) }).waitFor();
    assert.equal(await page.locator("#third-party").count(), 0, "no separate section when combined");
    await page.getByLabel("In their own section").check();
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator("#third-party").getByRole("button", { name: new RegExp(ALICE) }).waitFor();
    await accessible(page, "settings, opted in");
    await page.locator("#requests").getByRole("button", { name: /signal:carol/ }).click();
    await page.getByRole("button", { name: "Report as spam" }).click();
    await page.locator("#third-party").getByRole("button", { name: /signal:carol \(blocked\)/ }).waitFor();
  });

  await t.test("declining a message request: the sender cannot reach the user", async (t) => {
    const ERIN = "signal:erin";
    let r = await cli("send", "--as", ERIN, "--to", BOB, "--text", "hi bob, it's erin");
    assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
    const request = page.locator("#requests").getByRole("button", { name: /signal:erin/ });
    await request.waitFor();
    await request.click();
    await page.getByRole("heading", { name: `Message request from ${ERIN}` }).waitFor();
    await page.getByRole("button", { name: "Decline", exact: true }).click();
    await page.getByText(`You declined ${ERIN}: they cannot reach you.`).waitFor();
    await page.locator("#third-party").getByRole("button", { name: /signal:erin \(declined\)/ }).waitFor();
    assert.equal(await page.locator("#requests").getByRole("button", { name: /signal:erin/ }).count(), 0, "no longer a request");
    await accessible(page, "declined request");
    r = await cli("send", "--as", ERIN, "--to", BOB, "--text", "after the decline");
    const refusedNow = r.code === 2 && /RECIPIENT_UNAVAILABLE/.test(r.stdout);
    if (!refusedNow) {
      assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
      const receipt = await listenFor(ERIN, (v) => v.receipt?.status === "FAILED");
      assert.equal(receipt.receipt.code, "RECIPIENT_UNAVAILABLE", JSON.stringify(receipt));
    }
    t.diagnostic(refusedNow ? "refused at once (exit 2, RECIPIENT_UNAVAILABLE)" : "accepted, then a FAILED receipt (RECIPIENT_UNAVAILABLE)");
    await page.waitForTimeout(500);
    assert.equal(await page.getByText("after the decline").count(), 0, "nothing from a declined sender is shown");
  });

  await t.test("blocking the sender refuses their next message", async (t) => {
    await page.locator("#third-party").getByRole("button", { name: new RegExp(ALICE) }).click();
    await page.getByRole("button", { name: `Block ${ALICE}` }).click();
    await page.getByText(`You blocked ${ALICE}: they cannot reach you.`).waitFor();
    const r = await cli("send", "--as", ALICE, "--to", BOB, "--text", "after the block");
    const refusedNow = r.code === 2 && /RECIPIENT_UNAVAILABLE/.test(r.stdout);
    let failedLater = false;
    if (!refusedNow) {
      assert.equal(r.code, 0, `${r.stdout} ${r.stderr}`);
      const receipt = await listenFor(ALICE, (v) => v.receipt?.status === "FAILED" || v.status === "FAILED" || /FAILED/.test(JSON.stringify(v)));
      failedLater = /RECIPIENT_UNAVAILABLE/.test(JSON.stringify(receipt));
    }
    assert.ok(refusedNow || failedLater, `the send after the block: ${r.code} ${r.stdout}`);
    t.diagnostic(refusedNow ? "refused at once (exit 2, RECIPIENT_UNAVAILABLE)" : "accepted, then a FAILED receipt (RECIPIENT_UNAVAILABLE)");
    await page.waitForTimeout(500);
    assert.equal(await page.getByText("after the block").count(), 0, "nothing from a blocked sender is shown");
  });

  await t.test("opting out stops every other app at once", async () => {
    await page.getByRole("button", { name: "Other messaging apps: settings" }).click();
    await page.getByRole("button", { name: "Turn off now" }).click();
    await page.getByText("Other apps: off").waitFor();
    const r = await cli("send", "--as", "signal:dave", "--to", BOB, "--text", "anyone there?");
    assert.equal(r.code, 2, `refused at once: ${r.stdout} ${r.stderr}`);
    assert.match(r.stdout, /RECIPIENT_UNAVAILABLE/);
    assert.deepEqual(errors, [], "no script errors");
  });
});
