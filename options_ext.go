package kad

import "time"

// extConfig holds the settings of the values and providers sides, kept
// apart so each can grow without touching the core's.
type extConfig struct{}

func defaultExt() extConfig { return extConfig{} }

func (e *extConfig) validate(c *config) []error { return nil }

// extState is the runtime state of the values and providers sides.
type extState struct{}

func (d *DHT) initExt() error  { return nil }
func (d *DHT) startExt()       {}
func (d *DHT) closeExt() error { return nil }

// refreshInterval is how long a looked-up bucket counts as fresh.
func (d *DHT) refreshInterval() time.Duration { return 10 * time.Minute }
