"""codedserve coding library: every scheme's encode/decode math (numpy; torch where training needs it)."""
