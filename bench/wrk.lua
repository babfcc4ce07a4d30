-- wrk script for bench/run: POSTs a prediction with a bearer token from TOKENS (one per line, taken in turn
-- across all connections: with 1,000 tokens they rotate, with the fresh set each request gets a new one), and
-- prints one JSON line of figures at the end.
local tokens = {}
local file = os.getenv("TOKENS")
if file and file ~= "" then
  for line in io.lines(file) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
end
local counter = 0
local threads_set_up = 0

-- Each thread's Lua state gets a global `thread_index` (0, 1, ...). It must not be read through a local of
-- the same name: each thread runs this file again, and such a local would be 0 in every thread, making both
-- threads send the same half of the tokens.
function setup(thread)
  thread:set("thread_index", threads_set_up)
  threads_set_up = threads_set_up + 1
end

function init(args)
  counter = thread_index
end

wrk.method = "POST"
wrk.body = '{"instances": [[1.0, 2.0, 3.0]], "metadata": {"user_email": "a@example.com"}}'
wrk.headers["content-type"] = "application/json"

function request()
  if #tokens > 0 then
    -- two wrk threads take alternate tokens
    counter = counter + 2
    wrk.headers["authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1]
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "rps": %.1f, "p50_us": %d, "p99_us": %d, "errors": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), errors, summary.errors.status))
end
