// test_actor_js.js: the Node twin of test_actor.py from the deployment guide.
const metadata = {
  "component": "test_actor_js",
  "description": "Pushes a large value, counts its calls in state",
  "inports": [],
  "outports": ["test", "status", "counter"]
};

async function process(context) {
  // Test compression with large data
  const largeData = "x".repeat(10000); // Will be compressed
  await context.sendOutput("test", largeData);

  // Test Redis state
  const counter = await context.getState("counter", 0);
  await context.setState("counter", counter + 1);

  return { status: "success", counter };
}

module.exports = { metadata, process };
