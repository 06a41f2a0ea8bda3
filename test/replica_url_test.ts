import assert from "node:assert/strict";
import { resolve } from "node:path";
import process from "node:process";
import { WalshipError } from "../src/errors.ts";
import { parseReplicaUrl } from "../src/replica/url.ts";
import { test } from "./_runtime.ts";

const noEnv = {};

function badUrl(url: string, env: Record<string, string> = {}): WalshipError {
  try {
    parseReplicaUrl(url, env);
  } catch (err) {
    assert.ok(err instanceof WalshipError, `expected a WalshipError for ${url}, got ${err}`);
    assert.equal(err.code, "BAD_URL");
    assert.ok(!err.message.includes("\n"), "message is one line");
    assert.match(
      err.message,
      /s3:\/\/bucket\[\/prefix\].*file:\/\/\/abs\/dir/,
      "message shows the accepted forms",
    );
    return err;
  }
  assert.fail(`parseReplicaUrl(${JSON.stringify(url)}) did not throw`);
}

test("s3 URL: bucket and nested prefix, AWS defaults", () => {
  assert.deepEqual(parseReplicaUrl("s3://backups/app/db", noEnv), {
    kind: "s3",
    bucket: "backups",
    prefix: "app/db",
    region: "us-east-1",
    forcePathStyle: false,
  });
});

test("s3 URL: slashes around the prefix are dropped, empty prefix allowed", () => {
  const a = parseReplicaUrl("s3://b//x/y//", noEnv);
  assert.equal(a.kind === "s3" && a.prefix, "x/y");
  for (const url of ["s3://b", "s3://b/", "s3://b///"]) {
    const p = parseReplicaUrl(url, noEnv);
    assert.deepEqual(p.kind === "s3" && [p.bucket, p.prefix], ["b", ""], url);
  }
});

test("s3 URL: percent-encoded prefix is decoded", () => {
  const p = parseReplicaUrl("s3://b/my%20db", noEnv);
  assert.equal(p.kind === "s3" && p.prefix, "my db");
});

test("s3 URL: endpoint and region from the query; an endpoint implies path style", () => {
  const p = parseReplicaUrl(
    "s3://b/p?endpoint=http%3A%2F%2F127.0.0.1%3A9000%2F&region=eu-west-3",
    noEnv,
  );
  assert.deepEqual(p, {
    kind: "s3",
    bucket: "b",
    prefix: "p",
    endpoint: "http://127.0.0.1:9000",
    region: "eu-west-3",
    forcePathStyle: true,
  });
  const unencoded = parseReplicaUrl("s3://b/p?endpoint=https://minio.local:9000", noEnv);
  assert.equal(unencoded.kind === "s3" && unencoded.endpoint, "https://minio.local:9000");
});

test("s3 URL: force-path-style overrides the default either way", () => {
  const off = parseReplicaUrl("s3://b/p?endpoint=http://h:1&force-path-style=false", noEnv);
  assert.equal(off.kind === "s3" && off.forcePathStyle, false);
  const on = parseReplicaUrl("s3://b/p?force-path-style=true", noEnv);
  assert.equal(on.kind === "s3" && on.forcePathStyle, true);
});

test("s3 URL: region falls back to AWS_REGION, then AWS_DEFAULT_REGION, then us-east-1", () => {
  const region = (env: Record<string, string>) => {
    const p = parseReplicaUrl("s3://b/p", env);
    return p.kind === "s3" ? p.region : "";
  };
  assert.equal(
    region({ AWS_REGION: "ap-south-1", AWS_DEFAULT_REGION: "eu-north-1" }),
    "ap-south-1",
  );
  assert.equal(region({ AWS_DEFAULT_REGION: "eu-north-1" }), "eu-north-1");
  assert.equal(region({ AWS_REGION: "" }), "us-east-1");
  const q = parseReplicaUrl("s3://b/p?region=sa-east-1", { AWS_REGION: "ap-south-1" });
  assert.equal(q.kind === "s3" && q.region, "sa-east-1");
});

test("s3 URL: endpoint falls back to AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL", () => {
  const endpoint = (url: string, env: Record<string, string>) => {
    const p = parseReplicaUrl(url, env);
    return p.kind === "s3" ? [p.endpoint, p.forcePathStyle] : [];
  };
  const both = { AWS_ENDPOINT_URL_S3: "http://s3only:1", AWS_ENDPOINT_URL: "http://all:2" };
  assert.deepEqual(endpoint("s3://b/p", both), ["http://s3only:1", true]);
  assert.deepEqual(endpoint("s3://b/p", { AWS_ENDPOINT_URL: "http://all:2" }), [
    "http://all:2",
    true,
  ]);
  assert.deepEqual(endpoint("s3://b/p?endpoint=http://q:3", both), ["http://q:3", true]);
  assert.deepEqual(endpoint("s3://b/p", {}), [undefined, false]);
});

test("file URL and plain paths become absolute directories", () => {
  assert.deepEqual(parseReplicaUrl("file:///var/backups/db/", noEnv), {
    kind: "file",
    dir: "/var/backups/db",
  });
  assert.deepEqual(parseReplicaUrl("file:///tmp/a%20b", noEnv), { kind: "file", dir: "/tmp/a b" });
  assert.deepEqual(parseReplicaUrl("/srv/replica", noEnv), { kind: "file", dir: "/srv/replica" });
  assert.deepEqual(parseReplicaUrl("file:/srv/replica", noEnv), {
    kind: "file",
    dir: "/srv/replica",
  });
  assert.deepEqual(parseReplicaUrl("./backups:2024", noEnv), {
    kind: "file",
    dir: resolve(process.cwd(), "backups:2024"),
  });
  assert.deepEqual(parseReplicaUrl("backups/../replica", noEnv), {
    kind: "file",
    dir: resolve(process.cwd(), "replica"),
  });
});

test("BAD_URL: no bucket, unknown scheme, bad endpoint, unknown parameter", () => {
  assert.match(badUrl("s3://").message, /no bucket/);
  assert.match(badUrl("s3:///prefix").message, /no bucket/);
  assert.match(badUrl("gs://bucket/p").message, /unknown scheme "gs:"/);
  assert.match(badUrl("http://host/p").message, /unknown scheme "http:"/);
  assert.match(badUrl("s3://b/p?endpoint=localhost:9000").message, /endpoint must be an http/);
  assert.match(badUrl("s3://b/p?endpoint=").message, /endpoint must be an http/);
  assert.match(
    badUrl("s3://b/p", { AWS_ENDPOINT_URL: "ftp://x" }).message,
    /endpoint must be an http/,
  );
  assert.match(badUrl("s3://b/p?regoin=us-east-1").message, /unknown parameter "regoin"/);
  assert.match(
    badUrl("s3://b/p?force-path-style=yes").message,
    /force-path-style must be true or false/,
  );
  assert.match(badUrl("s3://b/p%zz").message, /percent-encoding/);
  assert.match(badUrl("file://otherhost/dir").message, /must be local/);
  assert.match(badUrl("file:///dir?x=1").message, /no query/);
  assert.match(badUrl("").message, /empty/);
  assert.match(badUrl("s3:/bucket/p").message, /must be followed by "\/\/"/);
  assert.match(badUrl("backups:2024").message, /unknown scheme "backups:"/);
});

test("BAD_URL messages never echo credentials or query values", () => {
  const userinfo = badUrl("s3://AKIAEXAMPLEKEY:wJalrXUtnFEMIsecret@bucket/p");
  assert.ok(!userinfo.message.includes("AKIAEXAMPLEKEY"), userinfo.message);
  assert.ok(!userinfo.message.includes("wJalrXUtnFEMIsecret"), userinfo.message);
  const query = badUrl("s3://b/p?token=supersecretvalue");
  assert.match(query.message, /unknown parameter "token"/);
  assert.ok(!query.message.includes("supersecretvalue"), query.message);
  const endpoint = badUrl("s3://b/p?endpoint=http://user:hunter2pass@host:9000");
  assert.match(endpoint.message, /must not hold credentials/);
  assert.ok(!endpoint.message.includes("hunter2pass"), endpoint.message);
});
