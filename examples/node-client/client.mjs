#!/usr/bin/env node
// A Multipass client in Node, built only from protos/multipass/v1 (no generated code): submits a prompt
// with Jobs.SubmitJob, then follows Jobs.WatchJob and prints every event as one JSON line.
//
//   npm install
//   node client.mjs --addr GATEWAY --api-key "$(cat ../../.multipass/dev-api-key)" \
//       --prompt "a lighthouse at dusk" --param steps=4 --param w=256 --param h=256
//
// GATEWAY is the gateway's host:port: the local stack picks a free port at each start and prints it
// (`multipass status`, or "gateway_address" in ../../.multipass/stack.json); a deployment's is its own
// (127.0.0.1:50050, the default, is the gateway's port in Kubernetes and with `python -m multipass_gateway`).
//
// The API key may also come from MULTIPASS_API_KEY. Exit status: 0 when the job succeeded, 1 when it
// ended otherwise, 2 when a call failed (the gRPC code and message are printed on stderr).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));
const PROTO_ROOT = path.resolve(here, '..', '..', 'protos');

function loadApi(protoRoot = PROTO_ROOT) {
  const definition = protoLoader.loadSync('multipass/v1/jobs.proto', {
    includeDirs: [protoRoot],
    keepCase: true, // proto field names, as in the Python client and the JSON of job.json
    longs: String,
    enums: String,
    defaults: true, // proto3 zero values present (image_index 0), oneof members only when set
    oneofs: true, // event.event names the member of the JobEvent oneof
  });
  return grpc.loadPackageDefinition(definition).multipass.v1;
}

function parseParams(pairs) {
  const params = {};
  for (const pair of pairs ?? []) {
    const at = pair.indexOf('=');
    if (at <= 0) throw new Error(`--param ${pair}: expected NAME=VALUE`);
    params[pair.slice(0, at)] = pair.slice(at + 1);
  }
  return params;
}

function describe(error) {
  const code = Object.keys(grpc.status).find((name) => grpc.status[name] === error.code) ?? String(error.code);
  return `${code}: ${error.details ?? error.message}`;
}

async function main() {
  const { values } = parseArgs({
    options: {
      addr: { type: 'string', default: '127.0.0.1:50050' },
      'api-key': { type: 'string', default: process.env.MULTIPASS_API_KEY ?? '' },
      prompt: { type: 'string' },
      file: { type: 'string' },
      param: { type: 'string', multiple: true },
      'idempotency-key': { type: 'string', default: '' },
      'timeout-seconds': { type: 'string', default: '600' },
    },
  });
  const prompt = values.file ? readFileSync(values.file, 'utf8') : values.prompt;
  if (!prompt) throw new Error('give --prompt TEXT or --file FILE');
  if (!values['api-key']) throw new Error('give --api-key or set MULTIPASS_API_KEY');

  const v1 = loadApi();
  const jobs = new v1.Jobs(values.addr, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.add('authorization', `Bearer ${values['api-key']}`);
  const deadline = () => new Date(Date.now() + Number(values['timeout-seconds']) * 1000);

  const submitted = await new Promise((resolve, reject) => {
    jobs.SubmitJob(
      { prompt, params: parseParams(values.param), idempotency_key: values['idempotency-key'] },
      metadata,
      { deadline: deadline() },
      (error, response) => (error ? reject(error) : resolve(response)),
    );
  });
  console.log(JSON.stringify({ submitted: submitted.job_id, existing: submitted.existing, warnings: submitted.warnings }));

  const finalState = await new Promise((resolve, reject) => {
    let state = null;
    const stream = jobs.WatchJob({ job_id: submitted.job_id, after_sequence: 0 }, metadata, { deadline: deadline() });
    stream.on('data', (event) => {
      const kind = event.event;
      console.log(JSON.stringify({ sequence: Number(event.sequence), progress: event.progress, kind, [kind]: event[kind] }));
      if (kind === 'finished') state = event.finished.state;
    });
    stream.on('error', reject);
    stream.on('end', () => resolve(state));
  });
  jobs.close();
  return finalState === 'JOB_STATE_SUCCEEDED' ? 0 : 1;
}

main().then(
  (status) => process.exit(status),
  (error) => {
    console.error(error.code !== undefined ? describe(error) : String(error.message ?? error));
    process.exit(2);
  },
);
