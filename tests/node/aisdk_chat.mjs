// Follows one run with the Vercel AI SDK's own chat client, as `useChat({ resume: true })` does.
//
//   node aisdk_chat.mjs BASE_URL RUN_ID TOKEN [--max-resumes N]
//
// The chat is the `ai` package's AbstractChat (what @ai-sdk/react's useChat wraps) with a
// plain in-memory state, and DefaultChatTransport whose prepareReconnectToStreamRequest points
// its reconnect GET at the run's UI message stream route. The chat id is the run id.
// `resumeStream()` is what useChat calls on mount with `resume: true`; when the connection is
// cut mid-stream the fetch fails and the chat is in "error", so the script resumes again, as a
// page reload would. Prints one JSON object: the chat's messages, its status and error, how
// many resumes it took, and the types of every protocol part the transport received.
import { AbstractChat, DefaultChatTransport } from "ai";

class MemoryState {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage(message) { this.messages = this.messages.concat(message); }
  popMessage() { this.messages = this.messages.slice(0, -1); }
  replaceMessage(index, message) {
    this.messages = this.messages.map((m, i) => (i === index ? message : m));
  }
  snapshot(thing) { return structuredClone(thing); }
}

class Chat extends AbstractChat {
  constructor(options) { super({ ...options, state: new MemoryState() }); }
}

// The transport, recording each response's parts so the test sees the protocol's endings.
class RecordingTransport extends DefaultChatTransport {
  constructor(options) {
    super(options);
    this.responses = [];
  }
  processResponseStream(stream) {
    const parts = [];
    this.responses.push(parts);
    return super.processResponseStream(stream).pipeThrough(new TransformStream({
      transform(chunk, controller) {
        parts.push(chunk.type);
        controller.enqueue(chunk);
      },
    }));
  }
}

function isCut(error) {
  // undici: "terminated" (socket closed mid-body), "fetch failed", or "network ..."
  return error instanceof TypeError || /terminated|fetch|network|socket/i.test(String(error));
}

async function main() {
  const [base, runId, token] = process.argv.slice(2);
  const maxIndex = process.argv.indexOf("--max-resumes");
  const maxResumes = maxIndex > 0 ? Number(process.argv[maxIndex + 1]) : 200;
  const transport = new RecordingTransport({
    api: `${base}/chat`, // sending messages is not used: runs are started elsewhere
    prepareReconnectToStreamRequest: ({ id }) => ({
      api: `${base}/runs/${encodeURIComponent(id)}/ui-stream?token=${encodeURIComponent(token)}`,
    }),
  });
  const errors = [];
  const chat = new Chat({ id: runId, transport, onError: (e) => errors.push(String(e)) });
  let resumes = 0;
  let cuts = 0;
  for (;;) {
    resumes += 1;
    await chat.resumeStream();
    const done = chat.status !== "error" || !isCut(chat.error);
    if (done || resumes > maxResumes) break;
    cuts += 1;
  }
  const result = {
    status: chat.status,
    error: chat.error ? String(chat.error.message ?? chat.error) : null,
    messages: chat.messages,
    resumes,
    cuts,
    responses: transport.responses,
    errors,
  };
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
