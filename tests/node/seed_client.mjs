// The naive seed-style client: reads only `data: ` lines and JSON.parse(...).delta.
// It must not know about named events; the gateway's contract is that it works unchanged.
// Usage: node seed_client.mjs <gateway url> <token> [message]
const [url, token, message = "Hello there"] = process.argv.slice(2);

const response = await fetch(`${url}/chat`, {
  method: "POST",
  headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
  body: JSON.stringify({ message }),
});
if (!response.ok) {
  console.error(`HTTP ${response.status}: ${await response.text()}`);
  process.exit(1);
}

const reader = response.body.getReader();
const decoder = new TextDecoder();
let buffer = "";
let text = "";
reading: while (true) {
  const { value, done } = await reader.read();
  if (done) break;
  buffer += decoder.decode(value, { stream: true });
  const lines = buffer.split("\n");
  buffer = lines.pop();
  for (const line of lines) {
    if (!line.startsWith("data: ")) continue;
    const data = line.slice(6);
    if (data === "[DONE]") break reading;
    const delta = JSON.parse(data).delta;
    if (delta !== undefined) text += delta;
  }
}
process.stdout.write(text);
