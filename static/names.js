// Room names made up for the landing page's "Generate" button (what the
// server accepts is rtcsignal.js's ROOM_NAME).

const ADJECTIVES = [
  "amber", "brave", "calm", "clever", "cosy", "crisp", "eager", "gentle", "golden", "happy",
  "jolly", "kind", "lively", "lucky", "mellow", "merry", "nimble", "quiet", "rapid", "shiny",
  "silver", "sunny", "swift", "tidy", "vivid", "warm", "witty", "zesty",
];

const NOUNS = [
  "badger", "beacon", "canyon", "cedar", "comet", "delta", "falcon", "fern", "harbor", "heron",
  "island", "lagoon", "maple", "meadow", "otter", "panda", "pebble", "puffin", "river", "robin",
  "summit", "tiger", "tulip", "valley", "walrus", "willow", "yak", "zebra",
];

function pick(list, random) {
  return list[random % list.length];
}

/** A readable, hard-to-guess room name such as "swift-otter-4821-k3q9". */
export function randomRoomName() {
  const values = new Uint32Array(4);
  crypto.getRandomValues(values);
  const digits = String(values[2] % 10000).padStart(4, "0");
  const suffix = values[3].toString(36).slice(0, 4);
  return `${pick(ADJECTIVES, values[0])}-${pick(NOUNS, values[1])}-${digits}-${suffix}`;
}
