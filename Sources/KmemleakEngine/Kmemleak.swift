// The kmemleak algorithm (issue 2).
