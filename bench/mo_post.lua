-- wrk script of bench/inbound_mo.py: a provider pushing MO SMS as form POSTs.
--
--   wrk -t1 -c50 -d3s --latency -s bench/mo_post.lua URL -- MODE RUN PREFIX REPLAYS
--
-- URL     http://127.0.0.1:PORT/in/bench/bench-secret/mo
-- MODE    unique: every request a new sms_id, RUN-tT-N (T: wrk thread, N: its counter);
--         replay: every request repeats one of the warm-up's ids RUN-w-0 .. RUN-w-(REPLAYS-1)
-- PREFIX  the message text before its number, windows-1251 and percent-encoded
--         (the text of request N is PREFIX .. N .. "%3F", as bench/inbound_mo.py checks)
--
-- The bodies are built per request with string concatenation only, and no response()
-- callback is defined, so wrk does not parse answers in Lua: its CPU per request stays far
-- below the server's. done() prints one JSON line: requests, non-2xx answers, socket errors
-- and latency percentiles (microseconds).

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("thread_id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   mode = args[1] or "unique"
   run = args[2] or "run"
   prefix = args[3] or "text"
   replays = tonumber(args[4] or "1")
   counter = 0
   headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
   head = "phone=79161234567&message="
end

function request()
   local sms_id, number
   if mode == "replay" then
      number = counter % replays
      sms_id = run .. "-w-" .. number
   else
      number = counter
      sms_id = run .. "-t" .. thread_id .. "-" .. number
   end
   counter = counter + 1
   local body = head .. prefix .. number .. "%3F&sms_id=" .. sms_id
   return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, "read": %d, ' ..
      '"write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
end
