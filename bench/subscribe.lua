-- wrk script for bench/subscribe.py: POST /subscribe, a distinct address per request,
-- exactly `total` requests over all threads, then each thread stops.
--
--   wrk -t T -c C -d 1h -s bench/subscribe.lua URL -- TOTAL PREFIX TOPIC THREADS [close]
--
-- With "close" every post asks for its connection to be closed after the answer, and wrk
-- connects anew: one connection per post, as readers' browsers (or a proxy that does not
-- keep upstream connections) make them.
--
-- Every thread announces "thread-done" on stdout once its share is answered; the
-- harness then interrupts wrk (SIGINT), whose done() prints one JSON line of results.
-- A connection that has nothing left to send waits (delay) instead of sending more.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local quota, prefix, topic, headers
local reserved, sequence, answered = 0, 0, 0
statuses = {}

function init(args)
  local total = tonumber(args[1])
  local count = tonumber(args[4])
  prefix, topic = args[2], args[3]
  headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
  if args[5] == "close" then
    headers["Connection"] = "close"
  end
  quota = math.floor(total / count)
  if thread_index < total % count then
    quota = quota + 1
  end
  if quota == 0 then
    io.stdout:write("thread-done\n")
    io.stdout:flush()
  end
end

-- Called once before each request on a connection: reserve a slot, or park the connection.
function delay()
  if reserved >= quota then
    return 3600000
  end
  reserved = reserved + 1
  return 0
end

function request()
  sequence = sequence + 1
  local body = string.format("email=%s-%d-%d%%40example.com&topics=%s", prefix, thread_index, sequence, topic)
  return wrk.format("POST", "/subscribe", headers, body)
end

function response(status, headers, body)
  answered = answered + 1
  statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
  if answered == quota then
    io.stdout:write("thread-done\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  local e = summary.errors
  io.stdout:write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f, "statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.status, e.timeout))
  io.stdout:flush()
end
