-- wrk: send a different pre-built body on every call, one body per line of a file.
--
-- flask-obdcr refuses a replayed request (jti), so every call must carry its own signed
-- request; the bodies are built (and signed) beforehand by the benchmark scripts, since
-- signing is the client's cost. Configured through the environment:
--
--   BENCH_FILE          file with one body per line (required for a POST; a GET sends none)
--   BENCH_START         first line to use, 0-based (default 0)
--   BENCH_COUNT         how many lines from BENCH_START (default: to the end of the file)
--   BENCH_THREADS       wrk's -t (the lines are dealt out: thread i takes every i-th line;
--                       with BENCH_REUSE every thread takes every line)
--   BENCH_METHOD        POST (default) or GET
--   BENCH_PATH          request path (default /)
--   BENCH_CONTENT_TYPE  Content-Type (default application/json; none on a GET)
--   BENCH_EXPECT        the status a successful call gets (default 200)
--   BENCH_HEADER_NAME   an extra header, e.g. X-SSL-Client-Cert ...
--   BENCH_HEADER_FILE   ... whose value is this file's content (trailing newline dropped)
--   BENCH_HEADERS_FILE  more headers, one "Name: value" per line (an Authorization header:
--                       kept in a file, not in the environment, where ps could show it)
--   BENCH_REUSE         1: the bodies may be sent again (a tls_client_auth or
--                       client_secret_basic token request, a GET): a thread that runs out of
--                       lines starts again without counting it as "wrapped"
--
-- A thread that runs out of lines starts again at its first one (those calls are replays and
-- will be refused: the "wrapped" count says it happened; give the script more lines).
-- At the end it prints one line, "BENCH_JSON {...}", with the throughput, the latency
-- percentiles (microseconds) and the status counts, for the benchmark script to parse.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

local function read_file(path)
  local handle = assert(io.open(path, "rb"))
  local data = handle:read("*a")
  handle:close()
  return data
end

function init(args)
  local file = os.getenv("BENCH_FILE")
  local start = tonumber(os.getenv("BENCH_START") or "0")
  local count = tonumber(os.getenv("BENCH_COUNT") or "-1")
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  local header_name = os.getenv("BENCH_HEADER_NAME")
  local header_file = os.getenv("BENCH_HEADER_FILE")
  local headers_file = os.getenv("BENCH_HEADERS_FILE")

  method = os.getenv("BENCH_METHOD") or "POST"
  reuse = os.getenv("BENCH_REUSE") == "1"
  expect = tonumber(os.getenv("BENCH_EXPECT") or "200")
  path = os.getenv("BENCH_PATH") or "/"
  headers = {}
  if method ~= "GET" then
    headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
  end
  if header_name and header_file then
    headers[header_name] = (read_file(header_file):gsub("[\r\n]+$", ""))
  end
  if headers_file then
    for line in io.lines(headers_file) do
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name then
        headers[name] = value
      end
    end
  end

  bodies = {}
  if method == "GET" then
    -- one request, sent again and again: a GET has no body to vary
    bodies[1] = false
    reuse = true
  else
    local index = 0
    local stop = count >= 0 and start + count or math.huge
    assert(file, "BENCH_FILE is not set")
    for line in io.lines(file) do
      if index >= stop then break end
      -- lines that may be sent again are every thread's; the others are dealt out
      if index >= start and (reuse or (index - start) % nthreads == id) then
        bodies[#bodies + 1] = line
      end
      index = index + 1
    end
    assert(#bodies > 0, "no lines for thread " .. id .. " in " .. file)
  end

  position = 0
  wrapped = 0
  good = 0
  bad = 0
  statuses = {}
end

function request()
  position = position + 1
  if position > #bodies then
    position = 1
    if not reuse then
      wrapped = wrapped + 1
    end
  end
  return wrk.format(method, path, headers, bodies[position] or nil)
end

function response(status, response_headers, body)
  if status == expect then
    good = good + 1
  else
    bad = bad + 1
    statuses[status] = (statuses[status] or 0) + 1
    if bad <= 3 then
      io.stderr:write(string.format("unexpected %d: %s\n", status, string.sub(body or "", 1, 300)))
    end
  end
end

function done(summary, latency, requests)
  local good_total, bad_total, wrapped_total, used = 0, 0, 0, 0
  local merged = {}
  for _, thread in ipairs(threads) do
    good_total = good_total + thread:get("good")
    bad_total = bad_total + thread:get("bad")
    wrapped_total = wrapped_total + thread:get("wrapped")
    used = used + thread:get("position")
    local counts = thread:get("statuses")
    for status, n in pairs(counts) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    parts[#parts + 1] = string.format('"%d":%d', status, n)
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"good":%d,"bad":%d,"wrapped":%d,' ..
    '"lines_used_last_round":%d,"socket_errors":%d,"timeouts":%d,' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d},"bad_statuses":{%s}}\n',
    summary.requests, summary.duration, good_total, bad_total, wrapped_total, used,
    errors.connect + errors.read + errors.write, errors.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, table.concat(parts, ",")))
end
