
*<|endoftext|>Once upon a time<|endoftext|>@Jreq-1