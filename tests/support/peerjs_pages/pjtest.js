// Drives the unchanged peerjs client for tests/test_peerjs_browser.py: the
// test calls these through the browser driver and reads window.T.state.
"use strict";
window.T = (() => {
  const state = { errors: [], received: [], calls: [], opens: 0 };
  const peers = {};

  function options(extra) {
    return {
      host: location.hostname,
      port: Number(location.port),
      path: "/peerjs/",
      secure: true,
      config: { iceServers: [] },
      ...extra,
    };
  }

  function describe(data) {
    if (data instanceof ArrayBuffer) return { bytes: Array.from(new Uint8Array(data)) };
    if (ArrayBuffer.isView(data)) return { bytes: Array.from(new Uint8Array(data.buffer)) };
    return data;
  }

  function watchCall(call, stream) {
    call.on("stream", (remote) => {
      state.calls.push({ peer: call.peer, tracks: remote.getVideoTracks().length });
    });
  }

  // A Peer named `name` in this page (id null: the server makes one);
  // resolves with its id, or the type of its first error.
  function start(name, id, extra) {
    return new Promise((resolve) => {
      const peer = id ? new Peer(id, options(extra)) : new Peer(options(extra));
      peers[name] = peer;
      peer.on("open", (pid) => {
        state.opens += 1;
        resolve({ id: pid });
      });
      peer.on("error", (e) => {
        state.errors.push(e.type);
        resolve({ error: e.type });
      });
      peer.on("connection", (conn) => {
        conn.on("data", (data) => {
          state.received.push({ from: conn.peer, serialization: conn.serialization, data: describe(data) });
          conn.send(data);
        });
      });
      peer.on("call", async (call) => {
        const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
        call.answer(stream);
        watchCall(call, stream);
      });
    });
  }

  // Send `payload` to `other` over a new data connection with this
  // serialization; resolves with what comes back (the other side echoes).
  function exchange(name, other, serialization, payload) {
    return new Promise((resolve, reject) => {
      const conn = peers[name].connect(other, { serialization, reliable: true });
      const timer = setTimeout(() => reject(new Error("no echo")), 15000);
      conn.on("open", () => {
        conn.send(payload.bytes ? new Uint8Array(payload.bytes).buffer : payload);
      });
      conn.on("data", (data) => {
        clearTimeout(timer);
        resolve(describe(data));
      });
      conn.on("error", (e) => reject(e));
    });
  }

  async function call(name, other) {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    const c = peers[name].call(other, stream);
    watchCall(c, stream);
    return true;
  }

  // Connect to an id nobody has: resolves with the error type.
  function connectNobody(name, other) {
    return new Promise((resolve) => {
      peers[name].once("error", (e) => resolve(e.type));
      peers[name].connect(other);
    });
  }

  function reconnect(name) {
    return new Promise((resolve) => {
      const peer = peers[name];
      peer.disconnect();
      peer.once("open", (pid) => resolve({ id: pid, disconnected: peer.disconnected }));
      setTimeout(() => peer.reconnect(), 100);
    });
  }

  return { state, peers, start, exchange, call, connectNobody, reconnect };
})();
