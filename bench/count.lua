-- Make wrk stop after a given number of responses (keep-alive requests).
--
-- Usage: wrk -t1 -c64 -d3600s -s count.lua http://host:port/ -- 10000
--
-- The limit applies per wrk thread, so use -t1 for an exact total; wrk may
-- report a handful more than the limit because responses already in flight
-- when the thread stops are still counted.

local limit = 10000
local seen = 0

init = function(args)
    limit = tonumber(args[1]) or limit
end

response = function(status, headers, body)
    seen = seen + 1
    if seen >= limit then
        wrk.thread:stop()
    end
end
