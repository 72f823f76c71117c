-- The Lua baseline of the proxy benchmark: what model_router does in its simplest form.
-- Buffers the body, finds "model" with a pattern, maps the alias, sets the routing header
-- and clears the route cache so the route is chosen again on it.
local targets = { ["llama3"] = "llama-3-8b", ["llama-3-8b"] = "llama-3-8b" }

function envoy_on_request(handle)
  local body = handle:body()
  if body == nil then
    return
  end
  local text = body:getBytes(0, body:length())
  local model = string.match(text, '"model"%s*:%s*"([^"]*)"')
  local target = model and targets[model]
  if target == nil then
    handle:respond({ [":status"] = "404" }, '{"error":{"message":"unknown model"}}')
    return
  end
  handle:headers():replace("x-modelgate-model", target)
  handle:clearRouteCache()
end
