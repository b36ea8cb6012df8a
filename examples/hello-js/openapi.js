// examples/hello/openapi.json as a module (the unit tests check they match).
export default {
  "schemas": {
    "Visits": {
      "type": "object",
      "required": ["name", "visits"],
      "properties": { "name": { "type": "string" }, "visits": { "type": "integer", "minimum": 0 } }
    }
  },
  "error": {
    "type": "object",
    "required": ["error"],
    "properties": { "error": { "type": "string" } }
  },
  "operations": {
    "hello.greet": {
      "summary": "A greeting (the word is the `greeting` setting)",
      "responses": { "200": { "schema": {
        "type": "object", "required": ["greeting"], "properties": { "greeting": { "type": "string" } } } } }
    },
    "hello.visit": {
      "summary": "Count a visit",
      "responses": { "200": { "schema": { "$ref": "#/components/schemas/Visits" } } }
    },
    "hello.visits": {
      "summary": "The visits so far",
      "responses": { "200": { "schema": { "$ref": "#/components/schemas/Visits" } } }
    },
    "hello.echo": {
      "summary": "The message back, with its length in characters",
      "body": { "type": "object", "required": ["message"], "properties": { "message": { "type": "string" } } },
      "responses": { "200": { "schema": {
        "type": "object", "required": ["echo", "length"],
        "properties": { "echo": { "type": "string" }, "length": { "type": "integer", "minimum": 0 } } } } }
    }
  }
};
