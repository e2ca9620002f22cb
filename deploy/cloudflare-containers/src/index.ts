/**
 * One consultation recorder per consultation on Cloudflare Containers.
 *
 * The Worker routes /consultations/:id/... to the Durable Object named after the
 * consultation id; that object owns the one container recording it. The consultation
 * app (the one that created the Realtime sessions) calls:
 *
 *   POST   /consultations/:id/recording          {participants: [{participant_id, role, tracks}]}
 *   POST   /consultations/:id/recording/tracks   {participant_id, role, tracks}   (late joiner)
 *   POST   /consultations/:id/recording/pause | /resume | /stop
 *   GET    /consultations/:id/recording
 *
 * The container runs the image built from the repository's Dockerfile (`bot record`),
 * with its settings in the environment (BOT_<SECTION>_<KEY>) and the control API on
 * :8790. The object talks to the control API with short-lived HS256 tokens it mints
 * itself (role "orchestrator", bound to this consultation). On /stop the recorder ends
 * the file, uploads, verifies and exits by itself; `sleepAfter` is only a backstop.
 *
 * Authenticating the caller of this Worker is the app's business and left out here.
 * Documented example, not run by the tests.
 */
import { Container, getContainer } from "@cloudflare/containers";

export interface Env {
  RECORDER: DurableObjectNamespace<RecorderContainer>;
  REALTIME_APP_ID: string;
  REALTIME_APP_SECRET: string; // wrangler secret put REALTIME_APP_SECRET
  R2_ENDPOINT: string; // https://<account>.r2.cloudflarestorage.com
  R2_BUCKET: string;
  R2_ACCESS_KEY_ID: string; // secrets: an R2 API token scoped to the bucket
  R2_SECRET_ACCESS_KEY: string;
  CONTROL_JWT_SECRET: string; // >= 32 characters, shared with the container only
  SSE_C_KEY?: string; // base64 of 32 bytes: encrypt with SSE-C
}

interface ParticipantBody {
  participant_id: string;
  role: string;
  tracks: string[]; // "SESSION_ID/TRACK_NAME"
}

const CONTROL_PORT = 8790;
const OPAQUE_ID = /^[A-Za-z0-9_-]{1,64}$/;
const TOKEN_SECONDS = 60;

export class RecorderContainer extends Container<Env> {
  defaultPort = CONTROL_PORT;
  // Longer than recording.max_duration plus the final upload: the recorder exits by
  // itself; this only reclaims a container nobody stopped.
  sleepAfter = "5h";

  private consultationId(): string {
    const name = this.ctx.id.name;
    if (!name || !OPAQUE_ID.test(name)) throw new Error("object must be addressed by consultation id");
    return name;
  }

  /** Start the recorder for this consultation with its first participants. */
  async startRecording(participants: ParticipantBody[]): Promise<Response> {
    const state = await this.getState();
    if (state.status === "running" || state.status === "healthy") {
      return Response.json({ error: "conflict", reason: "already recording" }, { status: 409 });
    }
    const args = ["record", "--config", "/etc/recorder/config.toml"];
    for (const p of participants) {
      if (!OPAQUE_ID.test(p.participant_id)) {
        return Response.json({ error: "bad_request", reason: "participant_id must be opaque" }, { status: 400 });
      }
      args.push("--participant", `${p.participant_id}:${p.role}=${p.tracks.join(",")}`);
    }
    const env = this.env;
    const envVars: Record<string, string> = {
      BOT_RECORDING_CONSULTATION_ID: this.consultationId(),
      BOT_REALTIME_APP_ID: env.REALTIME_APP_ID,
      BOT_REALTIME_APP_SECRET: env.REALTIME_APP_SECRET,
      BOT_STORAGE_BACKEND: "s3",
      BOT_STORAGE_ENDPOINT_URL: env.R2_ENDPOINT,
      BOT_STORAGE_BUCKET: env.R2_BUCKET,
      BOT_STORAGE_ACCESS_KEY_ID: env.R2_ACCESS_KEY_ID,
      BOT_STORAGE_SECRET_ACCESS_KEY: env.R2_SECRET_ACCESS_KEY,
      BOT_CONTROL_ENABLED: "true",
      BOT_CONTROL_HOST: "0.0.0.0",
      BOT_CONTROL_PORT: String(CONTROL_PORT),
      BOT_CONTROL_JWT_SECRET: env.CONTROL_JWT_SECRET,
      BOT_LOGGING_FORMAT: "json",
    };
    if (env.SSE_C_KEY) envVars.BOT_STORAGE_SSE_C_KEY = env.SSE_C_KEY;
    // The image's ENTRYPOINT is tini + bot: pass the whole command line.
    await this.startAndWaitForPorts({
      startOptions: { envVars, entrypoint: ["/usr/bin/tini", "--", "bot", ...args], enableInternet: true },
      ports: [CONTROL_PORT],
    });
    return this.control("GET", "/v1/status");
  }

  /** Call the recorder's control API with a fresh token. */
  async control(method: string, path: string, body?: unknown): Promise<Response> {
    const token = await mintToken(this.env.CONTROL_JWT_SECRET, this.consultationId());
    return this.containerFetch(
      new Request(`http://recorder${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      }),
      CONTROL_PORT,
    );
  }

  override onStop(params: { exitCode: number; reason: string }): void {
    // Exit codes (bot/exitcodes.py): 0 stored and verified; 5 storage failed, the file is
    // complete on the container's disk (gone with it: alert); others: see the logs.
    console.log(JSON.stringify({ event: "recorder.exited", exit_code: params.exitCode, reason: params.reason }));
  }

  override onError(error: unknown): void {
    console.error(JSON.stringify({ event: "recorder.error", error: String(error) }));
  }
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const url = new URL(request.url);
    const match = url.pathname.match(/^\/consultations\/([A-Za-z0-9_-]{1,64})\/recording(\/[a-z]+)?$/);
    if (!match) return new Response("not found", { status: 404 });
    const [, consultationId, action] = match;
    const recorder = getContainer(env.RECORDER, consultationId);
    if (request.method === "POST" && !action) {
      const body = (await request.json()) as { participants: ParticipantBody[] };
      return recorder.startRecording(body.participants);
    }
    if (request.method === "GET" && !action) return recorder.control("GET", "/v1/status");
    if (request.method === "POST" && action === "/tracks") {
      return recorder.control("POST", "/v1/tracks", await request.json());
    }
    if (request.method === "POST" && ["/pause", "/resume", "/stop"].includes(action ?? "")) {
      return recorder.control("POST", `/v1${action}`);
    }
    return new Response("method not allowed", { status: 405 });
  },
};

/** An HS256 JWT the recorder accepts: aud, sub, exp, consultation_id and role claims. */
async function mintToken(secret: string, consultationId: string): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: "HS256", typ: "JWT" };
  const claims = {
    sub: "orchestrator:durable-object",
    aud: "consultation-recorder",
    iat: now,
    exp: now + TOKEN_SECONDS,
    consultation_id: consultationId,
    role: "orchestrator",
  };
  const encode = (value: object | ArrayBuffer): string => {
    const bytes = value instanceof ArrayBuffer ? new Uint8Array(value) : new TextEncoder().encode(JSON.stringify(value));
    return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };
  const signingInput = `${encode(header)}.${encode(claims)}`;
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const signature = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(signingInput));
  return `${signingInput}.${encode(signature)}`;
}
