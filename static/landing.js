// The landing page: type a room name, or generate one, and go to /<room>.

import { randomRoomName } from "./names.js";
import { ROOM_NAME } from "./rtcsignal.js";

const form = document.getElementById("join-form");
const input = /** @type {HTMLInputElement} */ (document.getElementById("room-name"));
const problem = document.getElementById("room-error");

document.getElementById("generate").addEventListener("click", () => {
  input.value = randomRoomName();
  showProblem("");
  input.focus();
  input.select();
});

input.addEventListener("input", () => showProblem(""));

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = input.value.trim();
  if (!ROOM_NAME.test(name)) {
    showProblem(
      name === ""
        ? "Type a room name, or generate one."
        : "A room name is 1 to 64 letters, digits, or _ . ~ - (no spaces).",
    );
    input.focus();
    return;
  }
  // Relative to this page, so a server mounted under a path works too; a
  // token given to this page (?token=...) goes along to the room.
  const target = new URL(encodeURIComponent(name), window.location.href);
  const token = new URLSearchParams(window.location.search).get("token");
  if (token) target.searchParams.set("token", token);
  window.location.assign(target.href);
});

function showProblem(text) {
  problem.textContent = text;
  problem.hidden = text === "";
  input.setAttribute("aria-invalid", text === "" ? "false" : "true");
}
