
!Hello, world! The quick brown fox"