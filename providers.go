package kad

// providersConfig holds the providers side's settings.
type providersConfig struct{}

func defaultProvidersConfig() providersConfig { return providersConfig{} }

func (p *providersConfig) validate(c *config) []error { return nil }

// providersState is the providers side's runtime state.
type providersState struct{}

func (d *DHT) initProviders() error  { return nil }
func (d *DHT) startProviders()       {}
func (d *DHT) closeProviders() error { return nil }
