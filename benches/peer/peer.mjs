// The Node + Graphile Worker peer of orgsync's end-to-end benchmark (benches/throughput/peer.rs):
// a Clerk webhook receiver and its worker in one process, written as a Node engineer would
// deploy the same job with Graphile Worker's defaults.
//
// - POST /webhooks/clerk: verifies the Svix signature (HMAC-SHA256 of `${id}.${timestamp}.${body}`
//   with the base64 secret after `whsec_`, any `v1,` signature of the header, timestamps within
//   5 minutes), enqueues one Graphile job per delivery with `job_key` = svix-id (a redelivery of a
//   queued job replaces it instead of adding a second one) and answers 202 once `add_job` has
//   committed; 401 for a bad signature, 400 for a malformed body, 503 when the enqueue fails.
// - Task `clerk_event`: applies the event in one transaction to this database's own `hotels`,
//   `users` and `memberships` with orgsync's rules: newer `clerk_version` wins (the object's
//   `updated_at`, or the event time of a delete), tombstones are final, deleting a hotel or a user
//   ends its memberships, a membership of a tombstoned hotel or user is obsolete, a membership's
//   missing user gets a stub (version 0), and a membership whose hotel has no row yet throws, so
//   that Graphile retries it with its own backoff (exp(attempts) seconds, 25 attempts).
// - GET /readyz: 200 once the tables exist and the worker runs; GET /stats: the worker's counts.
//
// Environment: DATABASE_URL, CLERK_WEBHOOK_SECRET (whsec_...), PORT, PEER_CONCURRENCY (jobs run
// at once; Graphile's default is 1), PEER_POOL_SIZE (connections shared by receiver and worker).

import crypto from "node:crypto";
import http from "node:http";

import { makeWorkerUtils, run } from "graphile-worker";
import pg from "pg";

const env = process.env;
const concurrency = Number(env.PEER_CONCURRENCY ?? 8);
const poolSize = Number(env.PEER_POOL_SIZE ?? concurrency + 10);
const port = Number(env.PORT ?? 8080);
const secret = Buffer.from((env.CLERK_WEBHOOK_SECRET ?? "").replace(/^whsec_/, ""), "base64");
if (!env.DATABASE_URL || secret.length === 0) {
  console.error("DATABASE_URL and CLERK_WEBHOOK_SECRET are required");
  process.exit(2);
}
const TOLERANCE_SECONDS = 5 * 60;
const HANDLED = /^(organization|user|organizationMembership)\.(created|updated|deleted)$/;

const SCHEMA = `
create table if not exists hotels (
  id text primary key,
  name text not null,
  slug text,
  image_url text,
  public_metadata jsonb not null default '{}',
  created_at timestamptz not null,
  updated_at timestamptz not null,
  deleted_at timestamptz,
  clerk_version bigint not null
);
create table if not exists users (
  id text primary key,
  email text,
  first_name text,
  last_name text,
  image_url text,
  created_at timestamptz not null,
  updated_at timestamptz not null,
  deleted_at timestamptz,
  clerk_version bigint not null
);
create table if not exists memberships (
  hotel_id text not null references hotels (id),
  user_id text not null references users (id),
  clerk_membership_id text not null,
  role text not null,
  role_name text,
  permissions text[] not null default '{}',
  created_at timestamptz not null,
  updated_at timestamptz not null,
  deleted_at timestamptz,
  clerk_version bigint not null,
  primary key (hotel_id, user_id)
);
create index if not exists memberships_user_id on memberships (user_id);
`;

/** Clerk's envelope `timestamp` in milliseconds (seconds in its OpenAPI examples). */
const eventTime = (raw) => (Math.abs(raw) < 1e11 ? raw * 1000 : raw);

class HotelMissing extends Error {}

/** Applies one Clerk event in the transaction of `client`. */
async function apply(client, event) {
  const d = event.data;
  const at = eventTime(Number(event.timestamp));
  switch (event.type) {
    case "organization.created":
    case "organization.updated":
      await client.query(
        `insert into hotels (id, name, slug, image_url, public_metadata, created_at, updated_at, clerk_version)
         values ($1, $2, $3, $4, $5, to_timestamp($6 / 1000.0), to_timestamp($7 / 1000.0), $7)
         on conflict (id) do update set
           name = excluded.name, slug = excluded.slug, image_url = excluded.image_url,
           public_metadata = excluded.public_metadata, created_at = excluded.created_at,
           updated_at = excluded.updated_at, clerk_version = excluded.clerk_version
         where hotels.deleted_at is null and hotels.clerk_version < excluded.clerk_version`,
        [d.id, d.name, d.slug ?? null, d.image_url ?? null, d.public_metadata ?? {}, d.created_at, d.updated_at],
      );
      return;
    case "organization.deleted": {
      const gone = await client.query(
        `insert into hotels (id, name, created_at, updated_at, deleted_at, clerk_version)
         values ($1, '', to_timestamp($2 / 1000.0), to_timestamp($2 / 1000.0), to_timestamp($2 / 1000.0), $2)
         on conflict (id) do update set
           deleted_at = excluded.deleted_at, clerk_version = greatest(hotels.clerk_version, excluded.clerk_version)
         where hotels.deleted_at is null`,
        [d.id, at],
      );
      if (gone.rowCount > 0) {
        await client.query(
          `update memberships set deleted_at = to_timestamp($2 / 1000.0)
           where hotel_id = $1 and deleted_at is null`,
          [d.id, at],
        );
      }
      return;
    }
    case "user.created":
    case "user.updated": {
      const primary = (d.email_addresses ?? []).find((e) => e.id === d.primary_email_address_id);
      await client.query(
        `insert into users (id, email, first_name, last_name, image_url, created_at, updated_at, clerk_version)
         values ($1, $2, $3, $4, $5, to_timestamp($6 / 1000.0), to_timestamp($7 / 1000.0), $7)
         on conflict (id) do update set
           email = excluded.email, first_name = excluded.first_name, last_name = excluded.last_name,
           image_url = excluded.image_url, created_at = excluded.created_at,
           updated_at = excluded.updated_at, clerk_version = excluded.clerk_version
         where users.deleted_at is null and users.clerk_version < excluded.clerk_version`,
        [d.id, primary?.email_address ?? null, d.first_name ?? null, d.last_name ?? null, d.image_url ?? null,
          d.created_at, d.updated_at],
      );
      return;
    }
    case "user.deleted": {
      const gone = await client.query(
        `insert into users (id, created_at, updated_at, deleted_at, clerk_version)
         values ($1, to_timestamp($2 / 1000.0), to_timestamp($2 / 1000.0), to_timestamp($2 / 1000.0), $2)
         on conflict (id) do update set
           deleted_at = excluded.deleted_at, clerk_version = greatest(users.clerk_version, excluded.clerk_version)
         where users.deleted_at is null`,
        [d.id, at],
      );
      if (gone.rowCount > 0) {
        await client.query(
          `update memberships set deleted_at = to_timestamp($2 / 1000.0)
           where user_id = $1 and deleted_at is null`,
          [d.id, at],
        );
      }
      return;
    }
    case "organizationMembership.created":
    case "organizationMembership.updated":
    case "organizationMembership.deleted": {
      const hotelId = d.organization.id;
      const who = d.public_user_data;
      // FOR SHARE conflicts with a delete's update of the row: a concurrent delete either waits
      // for this transaction (and then ends what it wrote) or is seen by it.
      const hotel = await client.query(
        "select deleted_at is not null as deleted from hotels where id = $1 for share",
        [hotelId],
      );
      if (hotel.rowCount === 0) throw new HotelMissing(`hotel ${hotelId} does not exist yet`);
      if (hotel.rows[0].deleted) return; // obsolete
      await client.query(
        `insert into users (id, email, first_name, last_name, image_url, created_at, updated_at, clerk_version)
         values ($1, $2, $3, $4, $5, to_timestamp($6 / 1000.0), to_timestamp($6 / 1000.0), 0)
         on conflict (id) do nothing`,
        [who.user_id, who.identifier ?? null, who.first_name ?? null, who.last_name ?? null, who.image_url ?? null,
          d.created_at],
      );
      const user = await client.query(
        "select deleted_at is not null as deleted from users where id = $1 for share",
        [who.user_id],
      );
      if (user.rows[0].deleted) return; // obsolete
      const removedAt = event.type === "organizationMembership.deleted" ? at : null;
      const version = Math.max(removedAt ?? d.updated_at, d.updated_at);
      await client.query(
        `insert into memberships (hotel_id, user_id, clerk_membership_id, role, role_name, permissions,
                                  created_at, updated_at, deleted_at, clerk_version)
         values ($1, $2, $3, $4, $5, $6, to_timestamp($7 / 1000.0), to_timestamp($8 / 1000.0),
                 to_timestamp($9 / 1000.0), $10)
         on conflict (hotel_id, user_id) do update set
           clerk_membership_id = excluded.clerk_membership_id, role = excluded.role,
           role_name = excluded.role_name, permissions = excluded.permissions,
           created_at = excluded.created_at, updated_at = excluded.updated_at,
           deleted_at = case
             when excluded.deleted_at is null then null
             when memberships.clerk_membership_id = excluded.clerk_membership_id
               then least(coalesce(memberships.deleted_at, excluded.deleted_at), excluded.deleted_at)
             else excluded.deleted_at end,
           clerk_version = greatest(memberships.clerk_version, excluded.clerk_version)
         where
           -- a newer state of the same live membership, or of a different (newer) membership
           (memberships.clerk_version < excluded.clerk_version
             and (memberships.deleted_at is null
                  or memberships.clerk_membership_id <> excluded.clerk_membership_id))
           -- or the removal of this very membership, whatever order it arrives in
           or (excluded.deleted_at is not null
               and memberships.clerk_membership_id = excluded.clerk_membership_id
               and memberships.deleted_at is distinct from
                   least(coalesce(memberships.deleted_at, excluded.deleted_at), excluded.deleted_at))`,
        [hotelId, who.user_id, d.id, d.role, d.role_name ?? null, d.permissions ?? [], d.created_at, d.updated_at,
          removedAt, version],
      );
      return;
    }
    default:
      return;
  }
}

const taskList = {
  async clerk_event(event, helpers) {
    await helpers.withPgClient(async (client) => {
      await client.query("begin");
      try {
        await apply(client, event);
        await client.query("commit");
      } catch (e) {
        await client.query("rollback");
        throw e;
      }
    });
  },
};

/** True when `header` (`v1,<base64> v1,<base64> ...`) holds the signature of this delivery. */
function verified(id, timestamp, header, body) {
  const ts = Number(timestamp);
  if (!Number.isInteger(ts) || Math.abs(Date.now() / 1000 - ts) > TOLERANCE_SECONDS) return false;
  const expected = crypto.createHmac("sha256", secret).update(`${id}.${timestamp}.`).update(body).digest();
  return header.split(" ").some((part) => {
    const [version, sig] = part.split(",");
    if (version !== "v1" || !sig) return false;
    const given = Buffer.from(sig, "base64");
    return given.length === expected.length && crypto.timingSafeEqual(given, expected);
  });
}

const pool = new pg.Pool({ connectionString: env.DATABASE_URL, max: poolSize });
pool.on("error", (e) => console.error(`idle connection error: ${e.message}`));
pool.on("connect", (client) => client.on("error", (e) => console.error(`connection error: ${e.message}`)));
await pool.query(SCHEMA);
const utils = await makeWorkerUtils({ pgPool: pool });
await utils.migrate();
const runner = await run({ pgPool: pool, concurrency, taskList, crontab: "", noHandleSignals: true });
const stats = { received: 0, enqueued: 0, succeeded: 0, failed: 0, waitingForHotel: 0 };
runner.events.on("job:success", () => stats.succeeded++);
runner.events.on("job:error", ({ error }) => {
  stats.failed++;
  if (error instanceof HotelMissing) stats.waitingForHotel++;
});

function answer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/readyz") return answer(res, 200, { ready: true });
  if (req.method === "GET" && req.url === "/stats") return answer(res, 200, stats);
  if (req.method !== "POST" || req.url !== "/webhooks/clerk") return answer(res, 404, { error: "not found" });
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    stats.received++;
    const body = Buffer.concat(chunks);
    const id = req.headers["svix-id"];
    const timestamp = req.headers["svix-timestamp"];
    const signature = req.headers["svix-signature"];
    if (!id || !timestamp || !signature) return answer(res, 400, { error: "missing svix headers" });
    if (!verified(id, timestamp, signature, body)) return answer(res, 401, { error: "bad signature" });
    let event;
    try {
      event = JSON.parse(body.toString("utf8"));
    } catch {
      return answer(res, 400, { error: "malformed body" });
    }
    if (typeof event?.type !== "string" || typeof event.data !== "object") {
      return answer(res, 400, { error: "not a Clerk event" });
    }
    if (!HANDLED.test(event.type)) return answer(res, 200, { status: "skipped" });
    try {
      await utils.addJob("clerk_event", event, { jobKey: id });
      stats.enqueued++;
      answer(res, 202, { status: "queued" });
    } catch (e) {
      console.error(`enqueue failed: ${e.message}`);
      answer(res, 503, { error: "unavailable" });
    }
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, "127.0.0.1", () => console.log(`peer listening on 127.0.0.1:${port}, concurrency ${concurrency}`));

async function shutdown() {
  server.close();
  await runner.stop();
  await utils.release();
  await pool.end();
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
