// `portainer-api-client` 0.0.2 from the npm registry, unmodified, against
// Berth: its README's example (a registry's credentials changed by
// sending the registry back with a new Username and Password), with the
// status read first and a 404 it rejects with.
//
// Usage: NODE_PATH=.../node_modules node portainer_api_client_session.js
//        BERTH_URL USERNAME PASSWORD
// Prints `session ok` at the end; anything else exits 1.

const PortainerClient = require('portainer-api-client');

async function main(url, username, password) {
	const portainer = new PortainerClient(url, 'admin', 'adminpassword');
	const status = await portainer.callApiWithKey('get', '/api/status');
	if (!status.Version.startsWith('1.'))
		throw new Error('status: ' + JSON.stringify(status));

	const registries = await portainer.callApiWithKey('get', '/api/registries');
	const registry = registries[0];
	registry.Username = username;
	registry.Password = password;
	const updated = await portainer.callApiWithKey('PUT', '/api/registries/' + registry.Id, registry);
	if (updated.Username !== username || updated.Password !== '')
		throw new Error('update: ' + JSON.stringify(updated));

	let status404 = null;
	try {
		await portainer.callApiWithKey('get', '/api/nothing/here');
	} catch (code) {
		status404 = code;
	}
	if (status404 !== 404)
		throw new Error('expected a 404, got ' + status404);
	console.log('session ok');
}

main(...process.argv.slice(2)).catch(error => {
	console.error(error);
	process.exit(1);
});
