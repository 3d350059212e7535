module veil.dev/components/tlogcheck

go 1.26

require golang.org/x/mod v0.36.0
