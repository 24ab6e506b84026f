-- HTTP/1.1 pipelining for wrk (plaintext-benchmark style).
--
-- Every write sends DEPTH copies of the request back to back; wrk waits for
-- all DEPTH responses before it writes the next batch and counts each
-- response as one request.
--
-- Usage: wrk -s pipeline.lua http://host:port/ -- 16
--        (the number after "--" is the depth; default 16)

local batch

init = function(args)
    local depth = tonumber(args[1]) or 16
    local parts = {}
    for i = 1, depth do
        parts[i] = wrk.format()
    end
    batch = table.concat(parts)
end

request = function()
    return batch
end
