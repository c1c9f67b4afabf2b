"R/

system	Be brief.

userHi! Who are you?