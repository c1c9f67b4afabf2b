""</tool_call>R»

userWeather in Paris?
A
	assistant"4
call_get_weather 
get_weather{"city": "Paris"}
3
tool{"temp": 21}*call_get_weather2get_weather‰[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]{"enable_thinking": false}