// The session page: a live terminal (xterm.js) joined to the session's relay with the page's
// single-use join token, or the recording played back (asciinema-player) once it is sealed.
(function () {
  "use strict";
  const live = document.getElementById("terminal");
  if (live && window.Terminal) {
    const term = new window.Terminal({ cols: 80, rows: 24, convertEol: false });
    term.open(live);
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + live.dataset.relay);
    socket.binaryType = "arraybuffer";
    const state = document.querySelector("[data-field=relay-state]");
    socket.onopen = () => { if (state) state.textContent = "connected"; };
    socket.onmessage = (event) => {
      term.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
    };
    socket.onclose = () => { if (state) state.textContent = "closed"; };
    if (live.dataset.mode === "interactive") {
      const encoder = new TextEncoder();
      term.onData((data) => {
        if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
      });
    }
    term.focus();
  }
  const playback = document.getElementById("playback");
  if (playback && window.AsciinemaPlayer) {
    window.AsciinemaPlayer.create(playback.dataset.src, playback, { cols: 80, rows: 24, autoPlay: true, speed: 4 });
  }
})();
