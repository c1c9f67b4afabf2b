R
	
userxnot json[1]