// least-connections in JavaScript: the eligible server with the fewest open connections per unit of weight
// (active / weight); ties go to the one given the fewest connections per weight so far (total / weight). The
// same decisions as the shipped Rust plugin plugins/least-connections. No arguments.
//
// Built into a WebAssembly component by componentize-js (through jco) against vipd's WIT (see build.sh).
// WIT names map to camelCase; a `result` error is thrown, its payload the variant or enum value.

function eligible(c) {
  return c.state === "up" && c.weight > 0;
}

// The position of the least loaded eligible candidate, or -1. The counts are u32/u64 (numbers and
// BigInts): compared as BigInts so the products cannot lose precision.
export function pick(candidates) {
  let best = -1;
  candidates.forEach((c, i) => {
    if (!eligible(c)) return;
    if (best < 0) {
      best = i;
      return;
    }
    const b = candidates[best];
    const lc = BigInt(c.active) * BigInt(b.weight);
    const lb = BigInt(b.active) * BigInt(c.weight);
    const tc = BigInt(c.total) * BigInt(b.weight);
    const tb = BigInt(b.total) * BigInt(c.weight);
    if (lc < lb || (lc === lb && tc < tb)) best = i;
  });
  return best;
}

export const selection = {
  init(args) {
    if (args.length > 0) {
      throw { tag: "unknown-argument", val: args[0][0] };
    }
  },
  select(conn, candidates) {
    const i = pick(candidates);
    if (i < 0) throw "no-server";
    return candidates[i].index;
  },
  connectionClosed(conn, realId) {},
  connectionDitched(conn, realId) {},
  serverStateChanged(realId, state) {},
};
