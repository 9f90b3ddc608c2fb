-- wrk script for the throughput rows of bench/run.py: one warm tools/call per request.
--
--   wrk -t N -c N -s bench/call.lua -H "Authorization: Basic ..." http://127.0.0.1:PORT/ -- PREFIX SERVICE TOOL
--
-- Run with as many threads as connections: wrk has no per-connection hook,
-- so each thread (hence each connection) gets its own session id,
-- PREFIX .. thread number (0, 1, ...).  bench/run.py opens those sessions
-- before wrk starts, so every call is warm, and deletes them afterwards.

local next_index = 0

function setup(thread)
   thread:set("index", next_index)
   next_index = next_index + 1
end

function init(args)
   local prefix = args[1] or "wrk-"
   local service = args[2] or "todo"
   local tool = args[3] or "list_todos"
   local headers = {}
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   headers["Content-Type"] = "application/json"
   local body = string.format(
      '{"tool":"%s","session_id":"%s%d","arguments":{},"timeout":3600}', tool, prefix, index
   )
   call = wrk.format("POST", "/services/" .. service .. "/call", headers, body)
end

function request()
   return call
end
