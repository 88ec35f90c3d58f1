// Package ext: the dynamic configuration's extension points, empty as in Traefik's open-source build.
package ext

// HTTP extends dynamic.HTTPConfiguration.
type HTTP struct{}

// Router extends dynamic.Router.
type Router struct{}
