module github.com/abbot/go-http-auth

go 1.13

require golang.org/x/crypto v0.31.0
