// The browser's connection to the adapter: the gateway's own frames
// (ClientFrame up, ServerFrame down) over a WebSocket authenticated by the
// session cookie. Each request gets its answer by request_id; deliveries
// go to `onDeliver`. Reconnects by itself; the adapter then hands over
// again whatever was not acked.

import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ClientFrameSchema,
  ServerFrameSchema,
  type ClientFrame,
  type Deliver,
  type ServerFrame,
} from "./gen/interop/v1/client_pb";

export type FrameCase = NonNullable<MessageInitShape<typeof ClientFrameSchema>["frame"]>;

export class Connection {
  private ws: WebSocket | null = null;
  private nextId = 1n;
  private waiting = new Map<bigint, (f: ServerFrame) => void>();
  private ready: Promise<void>;
  private setReady!: () => void;
  private closed = false;

  constructor(
    private deviceId: string,
    private onDeliver: (d: Deliver) => void,
    private onState: (connected: boolean) => void,
  ) {
    this.ready = new Promise((r) => (this.setReady = r));
    this.open(0);
  }

  private open(attempt: number) {
    const url = new URL("/api/ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      attempt = 0;
      this.write(create(ClientFrameSchema, { requestId: 0n, frame: { case: "hello", value: { deviceId: this.deviceId, protocolVersion: 1 } } }));
    };
    ws.onmessage = (ev) => {
      const f = fromBinary(ServerFrameSchema, new Uint8Array(ev.data as ArrayBuffer));
      if (f.frame.case === "welcome") {
        this.onState(true);
        this.setReady();
        return;
      }
      if (f.frame.case === "deliver") {
        this.onDeliver(f.frame.value);
        return;
      }
      const answer = this.waiting.get(f.requestId);
      if (answer) {
        this.waiting.delete(f.requestId);
        answer(f);
      }
    };
    ws.onclose = () => {
      this.onState(false);
      this.ready = new Promise((r) => (this.setReady = r));
      // Requests on the old connection get no answer: they fail.
      for (const [, answer] of this.waiting) {
        answer(create(ServerFrameSchema, { frame: { case: "rejected", value: { code: 18, detail: "the connection was lost; try again" } } }));
      }
      this.waiting.clear();
      if (!this.closed) setTimeout(() => this.open(attempt + 1), Math.min(5000, 250 * 2 ** attempt));
    };
  }

  private write(f: ClientFrame) {
    this.ws?.send(toBinary(ClientFrameSchema, f));
  }

  /** Sends a frame and waits for its answer. */
  async request(frame: FrameCase): Promise<ServerFrame> {
    await this.ready;
    const id = this.nextId++;
    const answer = new Promise<ServerFrame>((resolve) => this.waiting.set(id, resolve));
    this.write(create(ClientFrameSchema, { requestId: id, frame }));
    return answer;
  }

  /** Sends a frame that has no answer (acks, read reports). */
  async post(frame: FrameCase) {
    await this.ready;
    this.write(create(ClientFrameSchema, { requestId: 0n, frame }));
  }

  close() {
    this.closed = true;
    this.ws?.close();
  }
}
